"""Hostile and careless input, training (issue 11, items 16-19): each test failed before its fix.

One real 4-step MoCo run on Fashion-MNIST (ResNet-18 at 32 px, checkpoints at steps 2 and 4) is
made once; each test damages its own copy."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training import runfiles
from training.cli import main as training_main
from training.config import ConfigError, parse_assignments, read_recipe, resolve
from training.engine import pretrain
from training.export import export
from training.runfiles import CheckpointError, RunFileError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=32, lr=0.1,
             lr_scaling="none", queue_size=256, proj_hidden=128, ema_momentum=0.99, temperature=0.2, bn_splits=4,
             log_every=1, checkpoint_every=2, keep_checkpoints=3, progress=False)


def small(**overrides):
    return resolve({}, {**SMALL, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    pretrain(small(steps=4), run)
    assert [step for step, _ in runfiles.list_checkpoints(run)] == [2, 4]
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _flip(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(count):  # inside the tensor data, where torch.load would not notice
        data[len(data) // 2 + offset * 97] ^= 0xFF
    path.write_bytes(bytes(data))


# 16 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_bad_latest_checkpoint_falls_back_to_the_previous_good_one(run, capfd, damage):
    latest = runfiles.checkpoint_path(run, 4)
    if damage == "flip":
        _flip(latest)
    elif damage == "truncate":
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    else:
        latest.write_bytes(os.urandom(4096))
    final = pretrain(small(steps=4), run)  # resumes from step 2 and redoes steps 3-4
    err = capfd.readouterr().err
    assert latest.name in err and "falling back" in err and "step_0000002.pt" in err, err
    assert final == runfiles.checkpoint_path(run, 4)
    assert runfiles.load_checkpoint(final)["step"] == 4  # the redone step verifies
    assert Path(f"{latest}.bad").exists()  # set aside, not resumed, not counted among the kept


def test_export_verifies_the_checkpoint(run, tmp_path, capfd):
    _flip(runfiles.checkpoint_path(run, 4))
    with pytest.raises(CheckpointError, match="checksum"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (export(run, tmp_path / "out2", step=2) / "model.safetensors").exists()
    assert training_main(["export", str(run), str(tmp_path / "out3")]) == 2
    assert "checksum" in capfd.readouterr().err


# 19 ------------------------------------------------------------------------------------------------------------

def test_checkpoint_from_another_run_is_refused(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / runfiles.RUN_FILE).unlink()
    runfiles.write_config(other, runfiles.read_config(other))  # another run: a new identity
    state = runfiles.load_checkpoint(runfiles.checkpoint_path(other, 4))
    foreign = runfiles.save_checkpoint(other, 6, {**state, "step": 6}, keep=5)  # same shapes, other run
    for path in (foreign, runfiles.checksum_path(foreign)):
        shutil.copy(path, run / runfiles.CHECKPOINT_DIR / path.name)
    with pytest.raises(CheckpointError, match="another run"):
        pretrain(small(steps=8), run)


def test_torn_last_metrics_line_is_dropped_with_a_message(run, capfd):
    with open(run / runfiles.METRICS_FILE, "a") as stream:
        stream.write('{"step": 5, "lo')  # a kill in the middle of an append
    pretrain(small(steps=4), run)  # resume: nothing left to train, metrics truncated to step 4
    assert "metrics.jsonl" in capfd.readouterr().err
    rows = runfiles.read_metrics(run)
    assert rows and max(row["step"] for row in rows) == 4


def test_bad_metrics_line_in_the_middle_names_the_file_and_line(run):
    lines = (run / runfiles.METRICS_FILE).read_text().splitlines()
    lines.insert(1, "garbage")
    (run / runfiles.METRICS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFileError, match=r"metrics\.jsonl: line 2"):
        pretrain(small(steps=4), run)


def test_stale_checkpoint_temporaries_are_removed_links_only_unlinked(run, tmp_path):
    folder = run / runfiles.CHECKPOINT_DIR
    (folder / ".step_0000006.pt.k2j3h4").write_bytes(b"\0" * 100_000)  # left by a killed write
    (folder / ".step_0000006.pt.json.x9y8z7").write_bytes(b"{")
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    (folder / ".step_0000008.pt.abcdef").symlink_to(precious)
    (folder / "notes.txt").write_text("mine")  # not ours: untouched
    pretrain(small(steps=4), run)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["notes.txt", "step_0000002.pt", "step_0000002.pt.json", "step_0000004.pt", "step_0000004.pt.json"])
    assert precious.read_text() == "keep me"


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_full_disk_is_a_clear_message_and_keeps_nothing_half_written(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(small(steps=1)))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "training", "pretrain", "--recipe", str(recipe), "--run",
                             str(run)], cwd=ROOT, capture_output=True, text=True, preexec_fn=_limit_file_size,
                            timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "cannot write" in result.stderr and "intact" in result.stderr
    assert [p.name for p in (run / runfiles.CHECKPOINT_DIR).iterdir()] in ([], ["step_0000001.pt.json"])


# 17 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(clip_grad=-1), dict(clip_grad=float("nan")), dict(weight_decay="abc"),
                                 dict(ema_momentum="abc"), dict(lr=float("nan")), dict(lr=float("inf")),
                                 dict(warmup_steps="150%"), dict(warmup_steps="abc%"), dict(warmup_steps="%"),
                                 dict(image_size=0), dict(image_size=1), dict(image_size=-5),
                                 dict(momentum=float("inf")), dict(crop_pct=0), dict(seed=-1)])
def test_recipe_values_are_validated(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        small(**bad)


def test_bad_value_writes_nothing_and_a_corrected_rerun_works(tmp_path):
    run = tmp_path / "run"
    base = ["pretrain", "--run", str(run), "--data", "fashion_mnist", "--arch", "r18", "--steps", "1",
            "--batch-size", "32", "--no-progress", "--set", "queue_size=64", "--set", "lr_scaling=none"]
    assert training_main(base + ["--image-size", "-5"]) == 2
    assert not run.exists()
    # a run that stopped before its first checkpoint: its config.yaml does not block a corrected rerun
    run.mkdir()
    runfiles.write_config(run, small(steps=1, lr=0.5))
    assert training_main(base + ["--image-size", "32"]) == 0
    assert runfiles.latest_checkpoint(run)[0] == 1


# 18 ------------------------------------------------------------------------------------------------------------

def test_numbers_are_parsed_as_a_user_means_them(tmp_path):
    values = parse_assignments(["lr=1e-3", "weight_decay=5E-4", "steps=10", "warmup_steps=5%", "augment=moco"])
    assert values == {"lr": 1e-3, "weight_decay": 5e-4, "steps": 10, "warmup_steps": "5%", "augment": "moco"}
    assert small(**{k: v for k, v in values.items() if k != "augment"})["lr"] == 1e-3
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 1e-3\nweight_decay: 1e-4\n")
    assert read_recipe(recipe) == {"lr": 1e-3, "weight_decay": 1e-4}


# one trainer per run directory ----------------------------------------------------------------------------------

def test_a_second_trainer_on_a_run_being_trained_is_refused_and_changes_nothing(run, tmp_path):
    """The same command started twice (two schedulers, a resume while the run is still going) would interleave
    checkpoints and metrics; the second is refused at once by the CLI with the fix, the run left as it was."""
    before = {path.name: path.read_bytes() for path in sorted((run / runfiles.CHECKPOINT_DIR).iterdir())}
    metrics = (run / runfiles.METRICS_FILE).read_bytes()
    with runfiles.sole_trainer(run):  # the other trainer, holding the lock
        with pytest.raises(runfiles.RunInUseError, match="being trained by another process.*rerun to resume"):
            pretrain(small(steps=6), run)
        cli = subprocess.run([sys.executable, "-m", "training", "pretrain", "--run", str(run), "--data",
                              "fashion_mnist", "--arch", "r18", "--steps", "6", "--batch-size", "32", "--image-size",
                              "32", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode != 0 and "being trained by another process" in cli.stderr, cli.stderr[-800:]
    assert {path.name: path.read_bytes() for path in sorted((run / runfiles.CHECKPOINT_DIR).iterdir())} == before
    assert (run / runfiles.METRICS_FILE).read_bytes() == metrics
    # the lock goes with its holder: the run resumes afterwards, and a lock file left by a killed process
    # (the OS dropped its lock) does not block either
    (run / runfiles.LOCK_FILE).write_text("")
    pretrain(small(steps=6), run)
    assert runfiles.latest_checkpoint(run)[0] == 6


def test_a_linked_lock_file_is_refused_without_touching_its_target(run, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (run / runfiles.LOCK_FILE).unlink()  # the finished run's own lock file (filelock leaves it; it holds nothing)
    (run / runfiles.LOCK_FILE).symlink_to(target)
    with pytest.raises(RunFileError, match="symbolic link; remove the link"):
        pretrain(small(steps=6), run)
    assert target.read_text() == "keep me"


def test_a_fresh_run_refused_before_writing_leaves_no_folder(tmp_path):
    run = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with runfiles.sole_trainer(run):
            assert (run / runfiles.LOCK_FILE).exists()
            raise RuntimeError("refused before the first write")
    assert not run.exists()
    with runfiles.sole_trainer(run):  # a folder that held only the lock counts as empty: the run starts in it
        pass
    pretrain(small(steps=1), run)
    assert runfiles.latest_checkpoint(run)[0] == 1
