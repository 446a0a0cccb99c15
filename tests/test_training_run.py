"""Real training on Fashion-MNIST (offline, 2 CPU cores): learning, exact resume after SIGTERM, export to
the zoo format, and clear errors that leave nothing half-written."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from training import runfiles
from training.config import ConfigError, resolve
from training.data import open_source
from training.engine import NonFiniteLossError, prepare, pretrain
from training.evaluate import knn_accuracy
from training.export import export

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# ResNet-18 (standard stem) at 32 px: ~16x cheaper than the 3x3 stem, so a test run fits in seconds.
SMALL = dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=32, lr=0.1,
             lr_scaling="none", queue_size=256, proj_hidden=128, ema_momentum=0.99, temperature=0.2, bn_splits=4,
             log_every=1, checkpoint_every=1000, progress=False)


def small(**overrides):
    return resolve({}, {**SMALL, **overrides})


def _final_state(run_dir):
    return runfiles.load_checkpoint(runfiles.latest_checkpoint(run_dir)[1])


def test_simclr_short_run_loss_falls_and_knn_beats_random_weights(tmp_path):
    config = small(method="simclr", steps=30, batch_size=48, lr=1.0, temperature=0.5, optimizer="lars")
    val = open_source("fashion_mnist", "val")
    random_setup = prepare(dict(config))
    knn = dict(train_images=2000, test_images=500)
    random_knn = knn_accuracy(random_setup.backbone.module, random_setup.source, val, random_setup.spec, **knn)

    pretrain(dict(config), tmp_path / "run")
    losses = [row["loss"] for row in runfiles.read_metrics(tmp_path / "run") if "loss" in row]
    assert len(losses) == 30
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.2, losses
    trained = prepare(dict(config))
    trained.method.load_state_dict(_final_state(tmp_path / "run")["method"])
    trained_knn = knn_accuracy(trained.backbone.module, trained.source, val, trained.spec, **knn)
    assert trained_knn > random_knn + 0.1, (trained_knn, random_knn)


def test_resuming_with_another_knn_monitor_is_allowed_and_bit_identical(tmp_path):
    """The kNN monitor's settings are resumable (config.RESUMABLE_CHANGES) because it changes nothing: a run
    that stops at step 4 and resumes with the monitor switched on and resized ends equal to one run straight
    through without it."""
    straight = pretrain(dict(small(steps=8)), tmp_path / "straight")
    run = tmp_path / "resumed"
    pretrain(dict(small(steps=8, checkpoint_every=4)), run)  # writes steps 4 and 8; keep 4 as the resume point
    runfiles.checkpoint_path(run, 8).unlink()
    runfiles.checksum_path(runfiles.checkpoint_path(run, 8)).unlink()
    monitored = small(steps=8, checkpoint_every=4, knn_every=2, knn_k=5, knn_t=0.5, knn_train_images=200,
                      knn_test_images=100)
    pretrain(dict(monitored), run)
    a, b = runfiles.load_checkpoint(straight), _final_state(run)
    assert b["step"] == 8
    assert [k for k in a["method"] if not torch.equal(a["method"][k], b["method"][k])] == []
    assert [row["step"] for row in runfiles.read_metrics(run) if "knn_top1" in row] == [6, 8]
    with pytest.raises(ConfigError, match="changed: temperature"):  # a key that does change the result still refuses
        pretrain(dict(small(steps=8, checkpoint_every=4, temperature=0.3)), run)


def test_moco_log_rows_say_whether_images_are_told_apart(tmp_path, capsys):
    """Each MoCo log row carries the in-batch similarities (the collapse check of issue 13); a ResNet from
    scratch is not collapsed (its queries spread out), so no warning is printed."""
    pretrain(dict(small(steps=4, log_every=2)), tmp_path / "run")
    rows = [row for row in runfiles.read_metrics(tmp_path / "run") if "loss" in row]
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        assert all(-1 <= row[k] <= 1 for k in ("cos_positive", "cos_other")) and -1 <= row["query_spread"] < 0.99, row
    assert "collapsed" not in capsys.readouterr().err


def test_a_collapsed_start_is_reported_once_on_stderr(tmp_path, capsys):
    """A base whose features ignore the image (layer4's first block zeroed: every image gives the same vector) starts
    MoCo collapsed: the first log row says so, once, naming the fixes."""
    from zoo.checkpoint import timm_config, write_checkpoint

    from training.models import build_backbone

    backbone = build_backbone("r18", 1)
    first = backbone.module.layer4[0]
    with torch.no_grad():  # both branches of layer4's first block output 0, and 0 stays 0 through the last block
        for bn in (first.bn2, first.downsample[1]):
            bn.weight.zero_()
            bn.bias.zero_()
    state = {k: v for k, v in backbone.module.state_dict().items()}
    cfg = {"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,), "interpolation": "bilinear", "crop_pct": 1.0}
    base = write_checkpoint(tmp_path / "constant-r18", state,
                            timm_config("resnet18", 0, 512, cfg, {"in_chans": 1}),
                            {"name": "constant-r18", "strategy": "random", "method": "none", "domain": "none",
                             "lineage": []})
    pretrain(dict(small(steps=4, log_every=1, init=str(base), lr=1e-9)), tmp_path / "run")
    rows = [row for row in runfiles.read_metrics(tmp_path / "run") if "loss" in row]
    assert all(row["query_spread"] > 0.999 for row in rows), rows
    err = capsys.readouterr().err
    assert err.count("MoCo's outputs have collapsed by step 1 (started from") == 1 and err.count("have collapsed") == 1, err
    assert "ResNet base" in err  # the advice for a run that already has a base: change the base


def _cli(args, **kwargs):
    return subprocess.Popen([PYTHON, "-m", "training", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_then_resume_gives_bit_identical_weights(tmp_path):
    config = small(steps=10)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    straight = pretrain(dict(config), tmp_path / "straight")

    run = tmp_path / "interrupted"
    process = _cli(["pretrain", "--recipe", str(recipe), "--run", str(run)])
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        rows = runfiles.read_metrics(run) if (run / runfiles.METRICS_FILE).exists() else []
        if any(row.get("step", 0) >= 3 for row in rows):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    stopped_at = runfiles.latest_checkpoint(run)[0]
    assert 3 <= stopped_at < 10, err
    assert "SIGTERM" in err and "resume" in err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp leftovers

    resumed = _cli(["pretrain", "--recipe", str(recipe), "--run", str(run)])
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    a, b = runfiles.load_checkpoint(straight), _final_state(run)
    assert a["step"] == b["step"] == 10
    assert a["method"].keys() == b["method"].keys()
    different = [k for k in a["method"] if not torch.equal(a["method"][k], b["method"][k])]
    assert not different, different  # query, key, heads, BN statistics and the MoCo queue
    steps = [row["step"] for row in runfiles.read_metrics(run) if "loss" in row]
    assert steps == list(range(1, 11))  # the log has no duplicated or missing steps after resume

    # export the resumed run: zoo.load gives the trained backbone
    out = export(run, tmp_path / "exported", heads=True)
    backbone = zoo.load(out)
    trained = prepare(dict(config))
    trained.method.load_state_dict(b["method"])
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x), trained.backbone.module.eval()(x))
    info = zoo.info(out)
    assert info["strategy"] == "moco" and info["arch"] == "r18" and info["domain"] == "fashion_mnist"
    assert info["steps"] == 10 and info["lineage"][-1]["sha256"] == info["trunk_sha256"]
    assert info["hyperparameters"]["queue_size"] == 256 and info["pretrained_cfg"]["input_size"] == [1, 32, 32]
    assert (out / "heads.safetensors").exists() and info["heads"]["prefix_in_training"] == "query.head."
    with pytest.raises(zoo.CheckpointFormatError):
        export(run, out)  # never overwrites

    # HPT-BN from the exported checkpoint: only BN parameters move, lineage grows by one hop
    hpt = small(steps=2, init=str(out), trainable="bn", lr=0.5)
    assert hpt["arch"] == "r18"
    pretrain(dict(hpt), tmp_path / "hptbn")
    after = _final_state(tmp_path / "hptbn")["method"]
    start = zoo.load(out).state_dict()
    moved = {k for k, v in start.items() if not torch.equal(v, after[f"query.backbone.{k}"])}
    bn_layers = {name for name, layer in zoo.load(out).named_modules() if isinstance(layer, torch.nn.BatchNorm2d)}
    assert moved and all(k.rsplit(".", 1)[0] in bn_layers for k in moved), sorted(moved)[:5]
    assert any(k.endswith("weight") and "bn" in k for k in moved)  # affine parameters trained, not only stats
    child = export(tmp_path / "hptbn", tmp_path / "hptbn-export")
    lineage = zoo.info(child)["lineage"]
    assert [hop["role"] for hop in lineage] == ["base", "target"] and zoo.info(child)["strategy"] == "hptbn"
    assert lineage[0]["sha256"] == info["trunk_sha256"]


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    with pytest.raises(ConfigError, match="did you mean queue_size"):
        small(queu_size=10)
    with pytest.raises(ConfigError, match="warmup_steps"):
        small(steps=10, warmup_steps=20)
    run = tmp_path / "run"
    missing = _cli(["pretrain", "--data", str(tmp_path / "nope"), "--run", str(run), "--steps", "5"])
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "does not exist" in err and "hf:<dataset id>" in err
    unknown = _cli(["pretrain", "--data", "fashion_mnist", "--run", str(run), "--set", "lr_sched=cos"])
    _, err = unknown.communicate(timeout=60)
    assert unknown.returncode == 2 and "unknown key 'lr_sched'" in err
    assert not run.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        pretrain(small(steps=2), tmp_path / "notes")
    assert os.listdir(tmp_path / "notes") == ["keep.txt"]


def test_nonfinite_loss_names_step_and_last_good_checkpoint(tmp_path):
    config = small(steps=8, lr=1e12, checkpoint_every=1, queue_size=64)
    with pytest.raises(NonFiniteLossError) as caught:
        pretrain(config, tmp_path / "run")
    message = str(caught.value)
    bad_step = int(message.split(" at step ")[1].split()[0])
    last = runfiles.latest_checkpoint(tmp_path / "run")
    assert last[0] == bad_step and str(last[1]) in message
    runfiles.load_checkpoint(last[1])  # complete and readable
    with pytest.raises(ConfigError, match="different recipe"):  # resume with another recipe is refused
        pretrain(small(steps=8, lr=0.1, checkpoint_every=1, queue_size=64), tmp_path / "run")


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """Resume restores Python's and NumPy's global RNGs too (user transforms draw from them)."""
    import random

    import numpy as np

    from training.engine import restore_rng_states, rng_states

    cpu = torch.device("cpu")
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached Gaussian in both generators
    torch.save({"rng": rng_states(cpu)}, tmp_path / "state.pt")

    def draws():
        return random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(2).tolist()

    expected = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_states(torch.load(tmp_path / "state.pt", weights_only=True)["rng"], cpu)
    assert draws() == expected


def test_channels_last_auto_follows_the_feature_map_size():
    from training.engine import wants_channels_last
    from training.models import build_backbone

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    r18, r18c = build_backbone("r18", 3).module, build_backbone("r18c", 3).module
    assert r18c.feature_info[-1]["reduction"] == 8  # the 3x3 stem keeps 4x more resolution than timm's
    assert wants_channels_last("auto", cpu, r18c, 32)  # 4x4 last map: NHWC is faster on oneDNN
    assert not wants_channels_last("auto", cpu, r18, 32)  # 1x1 last map: NHWC measured slower
    assert wants_channels_last("auto", cpu, r18, 64)
    assert wants_channels_last("auto", cuda, r18, 32)
    assert wants_channels_last(True, cpu, r18, 32) and not wants_channels_last(False, cuda, r18c, 224)
