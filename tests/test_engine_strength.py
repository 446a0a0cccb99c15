"""The training loop's bookkeeping on one short real run: the lr each step used, the metrics windows,
which checkpoints are kept and what they hold, resuming a finished run, the run-dir refusals, and
the small device/precision/signal helpers."""
from __future__ import annotations

import math
import signal

import pytest
import torch

from training import runfiles
from training.config import ConfigError, resolve
from training.engine import (_all_ranks_flags, _autocast, _SigtermFlag, apply_memory_format, check_base_arch,
                             pick_device, pretrain)
from training.optim import cosine_lr

CONFIG = dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=16, steps=5, lr=0.1,
              lr_scaling="linear", lr_reference_batch=8, warmup_steps=2, queue_size=40, proj_hidden=32,
              ema_momentum=0.9, log_every=2, checkpoint_every=2, keep_checkpoints=2, progress=False, seed=3,
              knn_every=5, knn_k=7, knn_t=0.2, knn_train_images=60, knn_test_images=30)
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
    """knn_every=5 of 5 steps: one row, the kNN top-1 (k=7, t=0.2, 60 train / 30 val images) of the final backbone."""
    from training.data import open_source
    from training.engine import prepare
    from training.evaluate import knn_accuracy

    run, config, final = finished_run
    rows = [row for row in runfiles.read_metrics(run) if "knn_top1" in row]
    assert [row["step"] for row in rows] == [5]
    setup = prepare(dict(config))
    setup.method.load_state_dict(runfiles.load_checkpoint(final)["method"])
    expected = knn_accuracy(setup.backbone.module, setup.source, open_source("fashion_mnist", "val"), setup.spec,
                            k=7, t=0.2, train_images=60, test_images=30)
    assert rows[0]["knn_top1"] == pytest.approx(expected, abs=1e-9)
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
    assert state["arch"] == {"arch": "r18", "timm_arch": "resnet18", "model_args": state["arch"]["model_args"],
                             "num_features": 512}
    assert state["spec"]["image_size"] == 32 and state["spec"]["channels"] == 1
    assert set(state["rng"]) >= {"torch", "python", "numpy"}
    assert len(state["optimizer"]["state"]) > 0  # momentum buffers were saved
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
