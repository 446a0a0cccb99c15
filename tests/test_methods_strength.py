"""MoCo and SimCLR beyond the losses: their published defaults, the queue's start, bf16 logits, the
head's export names, and the two-rank paths (shuffle-BN un-shuffle, one global queue, SimCLR's
gathered negatives) run in two real gloo processes against single-process references."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.moco import MoCo, info_nce
from training.simclr import SimCLR, nt_xent


def _backbone():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())


def test_moco_defaults_are_moco_v2s():
    torch.manual_seed(0)
    moco = MoCo(_backbone(), 16)
    assert (moco.ema_momentum, moco.temperature, moco.symmetric, moco.bn_splits) == (0.999, 0.2, False, 1)
    assert moco.queue.shape == (65536, 128) and moco.queue_ptr.dtype == torch.long and int(moco.queue_ptr) == 0
    torch.testing.assert_close(moco.queue.norm(dim=1), torch.ones(65536))
    assert moco.query.head[0][0].out_features == 2048 and moco.query.head[1][0].out_features == 128
    assert moco.backbone is moco.query.backbone and moco.trainable_module() is moco.query
    assert not any(p.requires_grad for p in moco.key.parameters())
    assert MoCo(_backbone(), 16, bn_splits=0).bn_splits == 1
    assert list(moco.head_state_dict()) == ["head.0.0.weight", "head.0.0.bias", "head.1.0.weight", "head.1.0.bias"]
    assert torch.equal(moco.head_state_dict()["head.1.0.weight"], moco.query.head[1][0].weight)


def test_simclr_defaults_are_simclr_v2s():
    torch.manual_seed(0)
    model = SimCLR(_backbone(), 16)
    assert model.temperature == 0.1 and len(model.encoder.head) == 3
    assert [block[0].out_features for block in model.encoder.head] == [2048, 2048, 128]
    assert model.backbone is model.encoder.backbone and model.trainable_module() is model.encoder
    assert list(model.head_state_dict())[0] == "head.0.0.weight"
    model.reset_key_encoder(), model.after_backward()  # no key encoder, no queue: nothing to do


def test_simclr_forward_is_nt_xent_over_one_batch_norm_pass_of_both_views():
    torch.manual_seed(0)
    model = SimCLR(_backbone(), 16, dim=4, hidden=8, temperature=0.3).train()
    v1, v2 = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    loss = model(v1, v2)
    with torch.no_grad():
        z = F.normalize(model.encoder(torch.cat([v1, v2])), dim=1)
    assert float(loss.detach()) == pytest.approx(float(nt_xent(z[:6], z[6:], 0.3)), rel=1e-5)
    separate = nt_xent(F.normalize(model.encoder(v1), dim=1), F.normalize(model.encoder(v2), dim=1), 0.3)
    assert abs(float(separate.detach()) - float(loss.detach())) > 1e-4  # BN over 2n images, not n and n


def test_runner_replaces_the_module_in_the_forward():
    torch.manual_seed(0)
    for method, attribute in ((MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=16), "query"),
                              (SimCLR(_backbone(), 16, dim=4, hidden=8), "encoder")):
        calls = []
        module = getattr(method, attribute)
        method.set_runner(lambda x, module=module: calls.append(len(x)) or module(x))
        method(torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2))
        assert calls == ([4] if attribute == "query" else [8])


def test_bf16_logits_are_upcast_and_float64_kept():
    q = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(10, 8, dtype=torch.float64), dim=1)
    assert info_nce(q, q, queue, 0.2).dtype == torch.float64
    assert info_nce(q.bfloat16(), q.bfloat16(), queue.bfloat16(), 0.2).dtype == torch.float32
    assert nt_xent(q.bfloat16(), q.bfloat16(), 0.2).dtype == torch.float32
    assert nt_xent(q, q, 0.2).dtype == torch.float64


def test_logits_under_bf16_autocast_keep_full_precision():
    """Under autocast the embeddings arrive in bf16; the similarities must still be float32 products of those
    values, not bf16-rounded ones (steps of 0.004 near cosine 1, the size of a positive's margin)."""
    torch.manual_seed(0)
    centre = F.normalize(torch.randn(1, 128), dim=1)  # embeddings sharing a direction, as in training
    base = F.normalize(centre + 0.1 * torch.randn(16, 128), dim=1)
    q = F.normalize(base + 0.02 * torch.randn(16, 128), dim=1).bfloat16()  # positives at cosine ~0.98
    k = base.bfloat16()
    queue = F.normalize(centre + 0.1 * torch.randn(64, 128), dim=1).bfloat16()  # bf16 logits: error ~6e-4
    reference_moco = info_nce(q.double(), k.double(), queue.double(), 0.1)
    reference_simclr = nt_xent(q.double(), k.double(), 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moco, simclr = info_nce(q, k, queue, 0.1), nt_xent(q, k, 0.1)
    assert moco.dtype == simclr.dtype == torch.float32
    assert abs(float(moco) - float(reference_moco)) < 1e-5
    assert abs(float(simclr) - float(reference_simclr)) < 1e-5


def _two_ranks(rank: int, init_file: str, results: str):
    import torch.distributed as dist

    import datetime

    # a bounded timeout: a broken exchange fails the test instead of waiting 30 minutes in a collective
    # (120 s: a spawned rank re-imports torch, slow on a loaded 2-core machine)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    torch.manual_seed(0)  # same weights and queue on both ranks
    moco = MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=20, bn_splits=4).eval()
    with torch.no_grad():
        for module in moco.key.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(), module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(10 + rank))
    torch.manual_seed(100 + rank)  # different RNG streams: the broadcast permutation must still agree
    keys = moco.encode_key(images)
    moco.enqueue(keys)
    z1, z2 = (F.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(20 + rank + 2 * v)), dim=1)
              for v in range(2))
    z1.requires_grad_(True)
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    torch.save({"images": images, "keys": keys, "queue": moco.queue, "ptr": moco.queue_ptr,
                "z1": z1.detach(), "z2": z2, "loss": loss.detach(), "grad": z1.grad}, f"{results}{rank}.pt")
    dist.barrier()  # both ranks done before either tears gloo down (a rank exiting mid-teardown aborted once)
    dist.destroy_process_group()


def test_two_gloo_ranks_shuffle_bn_global_queue_and_global_negatives(tmp_path):
    import torch.multiprocessing as mp

    # spawn, not fork: a child forked after the parent's OpenMP pool started can hang in its first BatchNorm
    # (seen in CI, where OMP_NUM_THREADS is not set)
    mp.start_processes(_two_ranks, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    reference = MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=20, bn_splits=4).eval()
    initial_queue = reference.queue.clone()
    for r, result in enumerate(ranks):
        torch.manual_seed(0)
        reference = MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=20, bn_splits=4).eval()
        with torch.no_grad():
            for module in reference.key.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_mean.normal_(), module.running_var.uniform_(0.5, 2.0)
            # eval mode: each rank's keys are its own images' keys, whatever the cross-rank shuffle did
            torch.testing.assert_close(result["keys"], F.normalize(reference.key(result["images"]), dim=1))
    # one global queue, identical on both ranks: rank 0's keys then rank 1's
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"]) and int(ranks[0]["ptr"]) == 12
    torch.testing.assert_close(ranks[0]["queue"][:12], torch.cat([ranks[0]["keys"], ranks[1]["keys"]]))
    assert torch.equal(ranks[0]["queue"][12:], initial_queue[12:])
    # SimCLR: the mean of the two ranks' losses is the single-process loss over the whole batch, and the
    # gradient reaching rank r's embeddings is the whole-batch gradient (summed over the ranks' losses)
    z1 = torch.cat([ranks[0]["z1"], ranks[1]["z1"]]).requires_grad_(True)
    z2 = torch.cat([ranks[0]["z2"], ranks[1]["z2"]])
    whole = nt_xent(z1, z2, 0.5)
    assert float(ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(float(whole), rel=1e-5)
    (2 * whole).backward()
    torch.testing.assert_close(torch.cat([ranks[0]["grad"], ranks[1]["grad"]]), z1.grad, rtol=1e-4, atol=1e-6)


def test_reset_key_encoder_copies_the_query_encoder():
    torch.manual_seed(0)
    moco = MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=16)
    with torch.no_grad():
        for p in moco.query.parameters():
            p.add_(1.0)
        moco.query.backbone[2].running_mean.add_(2.0)
    moco.reset_key_encoder()
    key, query = moco.key.state_dict(), moco.query.state_dict()
    assert key.keys() == query.keys() and all(torch.equal(key[k], query[k]) for k in key)
    assert not any(p.requires_grad for p in moco.key.parameters())


def test_after_backward_before_any_forward_enqueues_nothing():
    torch.manual_seed(0)
    moco = MoCo(_backbone(), 16, dim=4, hidden=8, queue_size=16)
    queue = moco.queue.clone()
    moco.after_backward()
    assert int(moco.queue_ptr) == 0 and torch.equal(moco.queue, queue)
    moco(torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2))
    moco.after_backward()
    moco.after_backward()  # a step's keys are enqueued once
    assert int(moco.queue_ptr) == 4
