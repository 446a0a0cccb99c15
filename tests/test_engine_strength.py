"""The training loop's bookkeeping on one short real run: the lr each step used, the metrics windows,
which checkpoints are kept and what they hold, resuming a finished run, the run-dir refusals, and
the small device/precision/signal helpers."""
from __future__ import annotations

import math
import re
import signal

import pytest
import torch

from training import runfiles
from training.config import ConfigError, resolve
from training.engine import (_all_ranks_flags, _autocast, _SigtermFlag, apply_memory_format, augments_on_device,
                             check_base_arch, ddp_device_ids, pick_device, pins_memory, pretrain)
from training.optim import cosine_lr

CONFIG = dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=16, steps=5, lr=0.1,
              lr_scaling="linear", lr_reference_batch=8, warmup_steps=2, queue_size=40, proj_hidden=32,
              ema_momentum=0.9, log_every=2, checkpoint_every=2, keep_checkpoints=2, progress=False, seed=3,
              knn_every=3, knn_k=7, knn_t=0.2, knn_train_images=60, knn_test_images=30)
PEAK_LR = 0.1 * 16 / 8  # linear scaling from the reference batch of 8


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("engine") / "runs" / "new" / "run"  # parents missing, as for a first `--run-dir runs/x`
    config = resolve({}, dict(CONFIG))
    final = pretrain(dict(config), run)
    return run, config, final


def test_metrics_rows_are_windows_with_the_lr_of_their_last_step(finished_run):
    run, config, _ = finished_run
    rows = [row for row in runfiles.read_metrics(run) if "loss" in row]
    assert [row["step"] for row in rows] == [2, 4, 5]  # every log_every steps and the last one
    for row in rows:  # the lr the row's last step trained with: warm-up 0.1, 0.2, then cosine
        assert row["lr"] == pytest.approx(cosine_lr(row["step"] - 1, 5, PEAK_LR, 2))
        assert row["images_per_s"] > 0 and 0 < row["loss"] < 20
    assert rows[0]["lr"] == pytest.approx(PEAK_LR)
    assert rows[-1]["lr"] == pytest.approx(PEAK_LR * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def test_knn_monitor_scores_the_trained_backbone_with_the_configured_protocol(finished_run):
    """knn_every=3 of 5 steps: rows at 3 and at the last step, the kNN top-1 (k=7, t=0.2, 60 train / 30 val
    images) of the backbone at that step."""
    from training.data import open_source
    from training.engine import prepare
    from training.evaluate import knn_accuracy

    run, config, final = finished_run
    rows = [row for row in runfiles.read_metrics(run) if "knn_top1" in row]
    assert [row["step"] for row in rows] == [3, 5]
    setup = prepare(dict(config))
    setup.method.load_state_dict(runfiles.load_checkpoint(final)["method"])
    expected = knn_accuracy(setup.backbone.module, setup.source, open_source("fashion_mnist", "val"), setup.spec,
                            k=7, t=0.2, train_images=60, test_images=30)
    assert rows[-1]["knn_top1"] == pytest.approx(expected, abs=1e-9)
    assert expected != knn_accuracy(setup.backbone.module, setup.source, open_source("fashion_mnist", "val"),
                                    setup.spec, k=7, t=0.2, train_images=60, test_images=20)


def test_prepare_reads_the_data_with_the_configured_domain(tmp_path):
    """An image folder has no domain of its own: config["domain"] names it, and the input statistics follow."""
    import numpy as np
    from PIL import Image

    from training.engine import prepare
    from training.views import input_spec

    for label in ("a", "b"):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    config = resolve({}, dict(CONFIG, data=str(tmp_path), domain="flowers", knn_every=0))
    setup = prepare(dict(config))
    assert setup.source.domain.name == "flowers"
    assert setup.spec.mean == input_spec(setup.source.domain, "auto", 32).mean



def test_checkpoints_every_n_and_last_keep_the_newest_two(finished_run):
    run, config, final = finished_run
    assert [step for step, _ in runfiles.list_checkpoints(run)] == [4, 5]
    assert final == runfiles.checkpoint_path(run, 5)
    state = runfiles.load_checkpoint(final)
    assert state["step"] == 5 and state["world_size"] == 1 and state["config"] == config
    assert "replica_digests" not in state  # one process: no replicas to compare
    assert state["arch"] == {"arch": "r18", "timm_arch": "resnet18", "model_args": state["arch"]["model_args"],
                             "num_features": 512}
    assert state["spec"]["image_size"] == 32 and state["spec"]["channels"] == 1
    assert set(state["rng"]) >= {"torch", "python", "numpy"}
    assert len(state["optimizer"]["state"]) > 0  # momentum buffers were saved
    groups = state["optimizer"]["param_groups"]  # SGD built with the recipe's momentum and weight decay
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.9, config["weight_decay"])]
    assert int(state["method"]["queue_ptr"]) == 5 * 16 % 40
    assert runfiles.read_config(run) == config


def test_rerunning_a_finished_run_returns_its_last_checkpoint_untouched(finished_run):
    run, config, final = finished_run
    before = final.stat().st_mtime_ns
    assert pretrain(dict(config), run) == final
    assert final.stat().st_mtime_ns == before
    assert [row["step"] for row in runfiles.read_metrics(run) if "loss" in row] == [2, 4, 5]


def test_run_dir_refusals(finished_run, tmp_path):
    run, config, _ = finished_run
    with pytest.raises(ConfigError, match=r"holds a run with a different recipe \(changed: lr\); use a new run "
                                          r"directory or the same settings to resume"):
        pretrain(resolve({}, dict(CONFIG, lr=0.3)), run)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty and is not a training run; choose a new run directory"):
        pretrain(dict(config), other)


def test_what_a_gpu_changes_is_decided_from_the_device_alone():
    """The GPU-only choices, checked here without a GPU: a torch.device("cuda", 1) is only a description."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)
    assert augments_on_device("auto", gpu) and not augments_on_device("auto", cpu)
    assert augments_on_device(True, cpu) and not augments_on_device(False, gpu)
    assert ddp_device_ids(gpu) == [gpu] and ddp_device_ids(cpu) is None
    assert pins_memory(gpu) and not pins_memory(cpu)


def test_device_and_precision_choices(monkeypatch):
    assert pick_device({"device": "cpu"}) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device({"device": "auto"}) == torch.device("cpu")
    with pytest.raises(ConfigError, match="^device=cuda but CUDA is not available$"):
        pick_device({"device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device({"device": "auto"}) == torch.device("cuda", 1)
    cpu = torch.device("cpu")
    assert isinstance(_autocast(cpu, {"amp": "auto"}), type(__import__("contextlib").nullcontext()))
    with _autocast(cpu, {"amp": "bf16"}):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with _autocast(cpu, {"amp": "off"}):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert _all_ranks_flags(True, False) == (True, False) and _all_ranks_flags(False, True) == (False, True)


def test_base_arch_conflicts_are_refused():
    check_base_arch(None, "r50", "sup-imagenet-r50")
    check_base_arch("r50", "r50", "sup-imagenet-r50")
    with pytest.raises(ConfigError) as caught:
        check_base_arch("r18", "r50", "sup-imagenet-r50")
    assert str(caught.value) == ("arch 'r18' was asked for, but the base sup-imagenet-r50 is a 'r50' checkpoint; "
                                 "pass arch 'r50' (or leave it out), or start from a 'r18' base")


def test_sigterm_flag_catches_and_restores_the_handler():
    previous = signal.getsignal(signal.SIGTERM)
    with _SigtermFlag() as flag:
        assert not flag.requested
        signal.raise_signal(signal.SIGTERM)
        assert flag.requested
    assert signal.getsignal(signal.SIGTERM) == previous


def test_channels_last_layout_only_when_asked():
    conv = torch.nn.Conv2d(3, 4, 3)
    assert apply_memory_format(conv, False) is conv and conv.weight.is_contiguous()
    assert apply_memory_format(conv, True).weight.is_contiguous(memory_format=torch.channels_last)


def test_knn_monitor_without_a_labelled_val_split_names_the_data_and_writes_nothing(tmp_path):
    import numpy as np
    from PIL import Image

    data = tmp_path / "only-train"
    for label in ("a", "b"):
        folder = data / "train" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"knn_every needs labelled train and val splits of {data}: "):
        pretrain(resolve({}, dict(CONFIG, data=str(data), domain="flowers", batch_size=4, knn_every=2)), run)
    assert not run.exists()


# ---- the methods and options the MoCo run above does not reach (each a real run of a few steps) ----
TINY = dict(data="fashion_mnist", arch="r18", image_size=32, batch_size=8, steps=2, lr=0.1, lr_reference_batch=8,
            warmup_steps=0, proj_hidden=32, proj_dim=16, log_every=1, checkpoint_every=1000, progress=False, seed=5)


def _final_state(run):
    return runfiles.load_checkpoint(runfiles.checkpoint_path(run, max(s for s, _ in runfiles.list_checkpoints(run))))


def test_replica_digest_covers_shared_state_and_skips_per_rank_bn_statistics():
    """The digest every replica must agree on: parameters and non-BN buffers count, BN running statistics
    (per process under DDP) do not; a 63-bit int, so it fits an int64 tensor in the checkpoint."""
    from training.engine import replica_digest

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    net.register_buffer("queue", torch.randn(4))
    base = replica_digest(net.state_dict())
    assert 0 <= base < 1 << 63 and base == replica_digest({k: v.clone() for k, v in net.state_dict().items()})
    with torch.no_grad():
        net[1].running_mean.add_(1.0), net[1].running_var.mul_(2.0), net[1].num_batches_tracked.add_(3)
    assert replica_digest(net.state_dict()) == base
    for change in (lambda: net[0].weight.add_(1e-3), lambda: net[1].bias.add_(1e-3), lambda: net.queue.add_(1e-3)):
        with torch.no_grad():
            change()
        assert replica_digest(net.state_dict()) != base
        base = replica_digest(net.state_dict())


def test_simclr_run_trains_one_encoder_from_the_engine(tmp_path):
    """method=simclr through the engine: its network (backbone + head_layers-deep head) trains and is saved."""
    run = tmp_path / "simclr"
    from training.models import build_backbone

    config = resolve({}, dict(TINY, method="simclr", optimizer="sgd", head_layers=2, temperature=0.5,
                              exclude_bn_bias=True, weight_decay=1e-3))
    torch.manual_seed(config["seed"])
    initial = build_backbone("r18", 1).module.state_dict()
    pretrain(dict(config), run)
    weights = _final_state(run)["method"]
    backbone = {k.removeprefix("encoder.backbone."): v for k, v in weights.items() if k.startswith("encoder.backbone.")}
    assert backbone.keys() == initial.keys()
    assert not torch.equal(backbone["conv1.weight"], initial["conv1.weight"])  # trained from the seeded init
    linears = {k for k in weights if k.startswith("encoder.head.") and k.endswith(".weight") and weights[k].dim() == 2}
    assert len(linears) == 2 and weights[sorted(linears)[-1]].shape == (16, 32)  # head_layers=2, proj 32 -> 16
    assert [row["step"] for row in runfiles.read_metrics(run) if "loss" in row] == [1, 2]
    # exclude_bn_bias: every bias and BN weight (the 1-d parameters) in a group without weight decay
    groups = _final_state(run)["optimizer"]["param_groups"]
    one_d = [k for k, v in weights.items() if v.dim() == 1 and not k.endswith(("running_mean", "running_var"))]
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [(1e-3, len(weights) - len(one_d) - sum(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in weights)), (0.0, len(one_d))]


def test_steps_schedule_drops_the_lr_tenfold_at_one_and_two_thirds(tmp_path):
    """schedule="steps" (the study's fine-tuning schedule) on a one-view method (supervised): x0.1 at 2 and 4 of 6."""
    run = tmp_path / "supervised"
    pretrain(resolve({}, dict(TINY, method="supervised", steps=6, schedule="steps", head_lr_scale=10.0)), run)
    rows = [row for row in runfiles.read_metrics(run) if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row["lr"] for row in rows] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # the method's own parameter groups: the classifier head at head_lr_scale x the backbone's lr
    groups = _final_state(run)["optimizer"]["param_groups"]
    assert sorted({round(g["lr"], 9) for g in groups}) == [0.001, 0.01]
    assert all(g["lr"] == pytest.approx(0.001 * g.get("lr_scale", 1.0)) for g in groups)


def test_clip_grad_bounds_the_first_update_and_hpt_bn_trains_only_batchnorm(tmp_path):
    """clip_grad: without weight decay or momentum history, step 0 moves the parameters by exactly lr x the
    clipped norm. trainable="bn" (HPT-BN): only BatchNorm affine parameters move."""
    from training.engine import prepare

    def moved(config, run):
        pretrain(dict(config), run)
        before = prepare(dict(config)).method.trainable_module()  # the run's seeded starting weights
        after = _final_state(run)["method"]
        bn = {f"{layer}.{name}" for layer, module in before.named_modules()
              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for name, _ in module.named_parameters()}
        return {name: after[f"encoder.{name}"] - p.detach() for name, p in before.named_parameters()}, bn

    config = resolve({}, dict(TINY, method="rotation", steps=1, weight_decay=0.0, clip_grad=1e-3))
    step, _ = moved(config, tmp_path / "clipped")
    assert torch.sqrt(sum((d.double() ** 2).sum() for d in step.values())) == pytest.approx(0.1 * 1e-3, rel=1e-4)
    frozen, bn = moved(resolve({}, dict(TINY, method="rotation", steps=1, trainable="bn")), tmp_path / "bn")
    backbone = {name: d for name, d in frozen.items() if name.startswith("backbone.")}
    assert len(bn) == 40 and sum(bool(backbone[name].abs().max() > 0) for name in bn) > 20
    assert all(torch.equal(d, torch.zeros_like(d)) for name, d in backbone.items() if name not in bn)
    assert all(d.abs().max() > 0 for name, d in frozen.items() if name.startswith("head."))  # heads always train


def test_pic_run_records_every_steps_lr_for_its_class_weights(tmp_path):
    """The engine calls begin_step(step, lr) before each step of a method that has one: PIC's lazily
    updated class weights keep the lr of every step (x pic_weight_lr_scale)."""
    run = tmp_path / "pic"
    config = resolve({}, dict(TINY, method="pic", steps=3, warmup_steps=1, pic_negatives=16, pic_weight_lr_scale=2.0))
    pretrain(dict(config), run)
    state = _final_state(run)["method"]
    recorded = next(v for k, v in state.items() if k.startswith("classes") and k.endswith("_extra_state"))
    expected = [2.0 * cosine_lr(step, 3, 0.1, 1) for step in range(3)]
    assert recorded.tolist() == pytest.approx(expected)


def test_on_device_augmentation_run_resumes_bit_identically(tmp_path):
    """augment_device=True (the CUDA default, runs on the CPU too): the loader only decodes, the views are
    drawn batched from a generator seeded by (seed, step, rank), so 1 step + resume 1 step == 2 steps."""
    config = resolve({}, dict(CONFIG, batch_size=8, steps=2, warmup_steps=1, queue_size=32, proj_hidden=32, knn_every=0,
                              checkpoint_every=1, augment_device=True))
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    pretrain(dict(config), whole)
    pretrain(dict(config, steps=1), halves)
    pretrain(dict(config), halves)
    a, b = _final_state(whole), _final_state(halves)
    assert a["step"] == b["step"] == 2 and int(a["method"]["queue_ptr"]) == 2 * 8  # a batch of keys a step
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    cpu = tmp_path / "cpu"
    pretrain(dict(config, augment_device=False), cpu)  # the other pipeline: other views, other weights
    assert not torch.equal(_final_state(cpu)["method"]["query.backbone.conv1.weight"],
                           a["method"]["query.backbone.conv1.weight"])


def test_one_view_method_trains_on_the_steps_first_view_of_a_prepared_set(tmp_path, monkeypatch):
    """A one-view method (rotation) gets views=1 from the loader: on a prepared set too large to hold decoded
    (JPEG bytes, EncodedViews) the crop boxes of every requested view are drawn before decoding, so asking for
    two views would change the first. The first step's logged loss is the method's loss on step 0's batch as
    training.batches defines it, from the same seeded initial weights."""
    import warnings

    from tests import domain_layouts
    from training import data
    from training.batches import StepBatches
    from training.encoded_views import EncodedViews, cpu_views
    from training.engine import prepare
    from training.prepare import prepare as prepare_data

    monkeypatch.setattr(data, "CACHE_PIXELS", 0)  # as for a set larger than the in-memory threshold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_data("domain_net_real", domain_layouts.build("domain_net_real", tmp_path / "download"),
                                tmp_path / "prepared")
    config = resolve({}, dict(TINY, data=str(prepared), method="rotation", batch_size=4, steps=1))
    run = tmp_path / "rotation"
    pretrain(dict(config), run)
    logged = [row["loss"] for row in runfiles.read_metrics(run) if "loss" in row]
    setup = prepare(dict(config))  # the run's own starting point: same seed, same weights
    transform = cpu_views(setup.source, setup.spec, config["augment"])
    assert isinstance(transform, EncodedViews)
    first_batch = StepBatches(setup.source, transform, 4, config["seed"], views=1)[0][0]
    setup.method.train()
    with torch.no_grad():
        expected = float(setup.method(first_batch))
    assert logged == [pytest.approx(expected, rel=1e-5)]


def test_compile_wraps_a_one_branch_methods_own_network(tmp_path, monkeypatch):
    """compile=True on a method without a key encoder (rotation) compiles the network it trains, not a MoCo
    query encoder it does not have. TORCHDYNAMO_DISABLE=1 (torch's own switch) makes torch.compile hand the
    network back as it is: the engine's wiring is under test, not inductor (minutes per graph on this CPU).
    The run then equals the uncompiled one bit for bit."""
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    config = resolve({}, dict(TINY, method="rotation"))
    pretrain(dict(config, compile=True), tmp_path / "compiled")
    pretrain(dict(config), tmp_path / "plain")
    compiled, plain = _final_state(tmp_path / "compiled")["method"], _final_state(tmp_path / "plain")["method"]
    assert compiled.keys() == plain.keys() and all(torch.equal(compiled[k], plain[k]) for k in plain)


def test_a_resumed_runs_progress_bar_starts_at_the_resumed_step(finished_run, tmp_path, capsys):
    import shutil

    run, config, _ = finished_run
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)  # the fixture's run stays as the other tests read it
    pretrain(dict(config, steps=6, progress=True), copy)
    bar = capsys.readouterr().err
    assert "moco fashion_mnist" in bar and " 5/6 " in bar and " 0/6 " not in bar
    assert [step for step, _ in runfiles.list_checkpoints(copy)] == [5, 6]
    last = [r for r in runfiles.read_metrics(copy) if r.get("step") == 6 and "loss" in r][-1]
    assert f"loss={last['loss']:.3f}" in bar and f"lr={last['lr']:.3g}" in bar  # the bar shows the logged row


def test_sigterm_mid_run_checkpoints_the_finished_step_and_raises_preempted(tmp_path):
    """In one process (the CLI test sends it to a torchrun-less subprocess): SIGTERM after the first logged
    step stops the run at the end of the step in progress, with a checkpoint of that step and a log row."""
    import os
    import threading
    import time

    from training.engine import Preempted

    run = tmp_path / "run"
    config = resolve({}, dict(TINY, method="rotation", steps=40))

    def terminate_after_the_first_row():
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / runfiles.METRICS_FILE).exists() and any("loss" in r for r in runfiles.read_metrics(run)):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must not end pytest
    try:
        sender = threading.Thread(target=terminate_after_the_first_row, daemon=True)
        sender.start()
        with pytest.raises(Preempted) as stopped:
            pretrain(dict(config), run)
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    step, path = stopped.value.step, stopped.value.path
    assert 1 <= step < 40 and path == runfiles.checkpoint_path(run, step)
    assert [s for s, _ in runfiles.list_checkpoints(run)] == [step]  # checkpoint_every=1000: only the stop's
    assert runfiles.load_checkpoint(path)["step"] == step
    assert runfiles.read_metrics(run)[-1] == {"step": step, "event": "sigterm", "checkpoint": str(path)}
    assert str(stopped.value) == f"stopped by SIGTERM after step {step}; checkpoint {path}; rerun the same command to resume"


def test_a_run_from_an_exported_backbone_starts_from_its_weights(finished_run, tmp_path):
    """init=<exported folder> (HPT): the arch comes from the base, the query encoder's backbone starts as the
    base's weights and the key encoder as a copy of the query encoder; naming another arch is refused."""
    from training.engine import prepare
    from training.export import export

    run, config, _ = finished_run
    folder = export(run, tmp_path / "exported")
    base = resolve({}, dict(CONFIG, arch=None, init=str(folder), knn_every=0))
    setup = prepare(base)
    assert base["arch"] == "r18" and setup.backbone.init["sha256"]
    exported = runfiles.load_checkpoint(runfiles.checkpoint_path(run, 5))["method"]
    query, key = setup.method.query.state_dict(), setup.method.key.state_dict()
    backbone = {k: v for k, v in query.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, exported[f"query.{k}"]) for k, v in backbone.items()
                            if not k.endswith("num_batches_tracked"))
    assert all(torch.equal(query[k], key[k]) for k in query)  # the key encoder: a copy, heads included
    with pytest.raises(ConfigError, match=f"arch 'r50' was asked for, but the base {re.escape(str(folder))} is"):
        prepare(resolve({}, dict(CONFIG, arch="r50", init=str(folder), knn_every=0)))  # names the base given
    # the run's crop_pct wins over the base's (1.0 at export) and over the domain's default
    assert prepare(resolve({}, dict(base, crop_pct=0.5))).spec.crop_pct == 0.5
