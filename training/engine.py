"""The training loop: iteration-based, one code path for one CPU, one GPU or torchrun + DDP.

Resume is exact on CPU: the schedule is a function of the step, the data a step sees is a function
of (seed, step) (training.batches), and a checkpoint holds the model (query + key encoders, heads,
MoCo queue, BN statistics), the optimizer state and the torch RNG state (which MoCo's key-batch
shuffle draws from). numpy and Python `random` are not used by the loop.

Several processes and machines (torchrun + DDP). Which rank decides what:
- global rank (training.dist.rank(), RANK): the data shard of a step (its slice of the global batch), the
  seed of on-device augmentation, and every file: only global rank 0 writes config.yaml, metrics.jsonl,
  checkpoints and the kNN log (never each node's local rank 0). Export and evaluation run afterwards, in
  one process, from the run directory.
- all ranks together: the MoCo queue (keys gathered from every rank, so it is identical everywhere), the
  shuffle-BN permutation (drawn on rank 0, broadcast), SIGTERM and non-finite-loss flags (all-reduced, so
  one preempted node stops every node at the same step with one checkpoint), the resume step (every rank
  must see the same newest checkpoint: the run directory is on shared storage) and, at each checkpoint, a
  digest of the weights every replica must share (a divergence is an error, never a saved state).
- local rank (LOCAL_RANK): only the CUDA device a process uses.
batch_size is the global batch; a run resumes on any process count that divides it.
"""
from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import dist, runfiles
from .batches import StepBatches, step_loader
from .config import ConfigError, differences
from .data import ImageSet, open_source
from .models import Backbone, backbone_from_zoo, build_backbone, make_bn_only_trainable
from .moco import MoCo, collapse_message
from .optim import build_optimizer, cosine_lr, scaled_lr, set_lr, step_lr
from .simclr import SimCLR
from .device_views import BatchedViews, raw_transform
from .encoded_views import cpu_views
from .views import InputSpec, input_spec, view_transform

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers read it as "requeue me"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the last finished step was written."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by SIGTERM after step {step}; checkpoint {path}; rerun the same command to resume")
        self.step, self.path = step, path


@dataclass
class Setup:
    config: dict
    source: ImageSet
    spec: InputSpec
    backbone: Backbone
    method: torch.nn.Module
    device: torch.device


def pick_device(config: dict) -> torch.device:
    import os

    if config["device"] == "cpu" or (config["device"] == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _build_moco(config: dict, backbone: Backbone, source: ImageSet) -> torch.nn.Module:
    return MoCo(backbone.module, queue_size=config["queue_size"], ema_momentum=config["ema_momentum"],
                symmetric=config["symmetric"], bn_splits=config["bn_splits"], **_contrastive_args(config, backbone))


def _build_simclr(config: dict, backbone: Backbone, source: ImageSet) -> torch.nn.Module:
    return SimCLR(backbone.module, head_layers=config["head_layers"], **_contrastive_args(config, backbone))


def _contrastive_args(config: dict, backbone: Backbone) -> dict:
    return dict(feature_dim=backbone.num_features, dim=config["proj_dim"], hidden=config["proj_hidden"],
                temperature=config["temperature"])


def _builders() -> dict:
    """method -> build(config, backbone, source). Each method module owns its heads and loss and may
    define, besides forward/after_backward/trainable_module/set_runner: `views` (1 or 2 views per image),
    `uses_indices` (forward gets the batch's dataset indices), `begin_step(step, lr)` and
    `make_batches(...)` (its own step -> images mapping, e.g. PIC's sliding window)."""
    from . import distill, pic, rotation, selftrain, supervised

    return {"moco": _build_moco, "simclr": _build_simclr, "pic": pic.build, "supervised": supervised.build,
            "rotation": rotation.build, "selftrain_student": selftrain.build_student,
            "distill_finetune": distill.build_finetune, "distill_student": distill.build_student}


def build_method(config: dict, backbone: Backbone, source: ImageSet) -> torch.nn.Module:
    builders = _builders()
    if config["method"] not in builders:  # selftrain, distill: chains of engine runs
        raise ConfigError(f"method {config['method']!r} runs as a chain of engine runs: "
                          f"use training.runner.pretrain (or python -m training pretrain)")
    return builders[config["method"]](config, backbone, source)


def check_base_arch(asked: str | None, base_arch: str, base: str) -> None:
    """A run that names an arch and starts from a base of another arch is refused: neither may silently win."""
    if asked is not None and asked != base_arch:
        raise ConfigError(f"arch {asked!r} was asked for, but the base {base} is a {base_arch!r} checkpoint; "
                          f"pass arch {base_arch!r} (or leave it out), or start from a {asked!r} base")


def prepare(config: dict) -> Setup:
    """Everything that can fail on bad input (data, base checkpoint, shapes), before any file is written."""
    device = pick_device(config)
    source = open_source(config["data"], config["split"], config["domain"])
    base = backbone_from_zoo(config["init"]) if config["init"] else None
    domain = source.domain
    spec = input_spec(domain, config["channels"], config["image_size"],
                      base_cfg=base.init["pretrained_cfg"] if base else None, crop_pct=config["crop_pct"])
    torch.manual_seed(config["seed"])
    if base:
        check_base_arch(config["arch"], base.arch, config["init"])
        config["arch"] = base.arch
    backbone = base or build_backbone(config["arch"], spec.channels)
    method = build_method(config, backbone, source)
    if base:
        method.reset_key_encoder()  # HPT: key encoder starts as a copy of the loaded query encoder
    if config["trainable"] == "bn":
        make_bn_only_trainable(method.backbone)
    return Setup(config, source, spec, backbone, method.to(device), device)


def wants_channels_last(setting, device: torch.device, backbone: nn.Module, image_size: int) -> bool:
    """channels_last True/False as set; "auto": always on CUDA, and on CPU when the last feature map
    is at least 2x2. oneDNN's NHWC convolutions trained 7-56% faster on the 2-core CPUs we measured
    (r18c at 32 px, r18 at 96 px, mnv2 at 64 px), neutral for r50 at 64 px (2x2 map), and 13% slower
    for r18 at 32 px, whose maps shrink to 1x1 (benchmarks/results/training.md). The layout never changes the saved
    values (export and checkpoints write contiguous tensors)."""
    if setting in (True, False):
        return setting
    if device.type == "cuda":
        return True
    stages = getattr(backbone, "feature_info", None) or [{"reduction": 32}]
    return image_size >= 2 * stages[-1]["reduction"]  # the last map is at least 2x2


def augments_on_device(setting, device: torch.device) -> bool:
    """augment_device True/False as set; "auto": on CUDA only, where batched random ops on the GPU take the
    per-image work off the loader (on CPU the loader's pipeline already does it with decode-aware crops)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def ddp_device_ids(device: torch.device) -> list | None:
    """DDP's device_ids: the process's one GPU on CUDA; None on CPU (gloo), where DDP refuses a list."""
    return [device] if device.type == "cuda" else None


def pins_memory(device: torch.device) -> bool:
    """Page-locked loader batches only help host-to-GPU copies (non_blocking); on CPU they cost a copy."""
    return device.type == "cuda"


def apply_memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


class _SigtermFlag:
    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no graceful stop
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _autocast(device: torch.device, config: dict):
    use_bf16 = config["amp"] == "bf16" or (config["amp"] == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def rng_states(device: torch.device) -> dict:
    """Every global RNG a step could draw from: torch's (our views), CUDA's, and Python's and NumPy's
    (user transforms and some libraries use those). Plain tensors, ints and strings only, so the
    checkpoint still loads with weights_only=True."""
    numpy_state = np.random.get_state(legacy=False)
    version, mt_state, gauss = random.getstate()
    states = {"torch": torch.get_rng_state(),
              "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
              "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                        "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                        "gauss": float(numpy_state["gauss"])}}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if "python" in states:  # absent in checkpoints written before they were saved
        python = states["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    if "numpy" in states:
        numpy_state = states["numpy"]
        np.random.set_state({"bit_generator": "MT19937", "has_gauss": numpy_state["has_gauss"],
                             "gauss": numpy_state["gauss"],
                             "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]}})
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def _state(step: int, setup: Setup, optimizer) -> dict:
    return {"step": step, "method": setup.method.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": rng_states(setup.device),
            "config": setup.config, "spec": setup.spec.as_dict(), "world_size": dist.world_size(),
            "arch": {"arch": setup.backbone.arch, "timm_arch": setup.backbone.timm_arch,
                     "model_args": setup.backbone.model_args, "num_features": setup.backbone.num_features},
            "init": setup.backbone.init, "data": setup.source.describe()}


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path):
    """The run directory, held by this trainer alone (every entry point, single run or chain, trains inside
    this). A folder with files but no run in it is the user's and is refused before anything, even the lock,
    is written into it; then rank 0 takes the lock, so a second trainer would be refused instead of
    interleaving checkpoints. Works before the process group exists (torchrun's RANK)."""
    if (run_dir.is_dir() and not (run_dir / runfiles.CONFIG_FILE).exists()
            and any(path.name != runfiles.LOCK_FILE for path in run_dir.iterdir())):
        raise ConfigError(f"{run_dir} is not empty and is not a training run; choose a new run directory")
    with runfiles.sole_trainer(run_dir, enabled=dist.launch_rank() == 0):
        yield


def open_run_dir(run_dir: Path, config: dict) -> dict | None:
    """Returns the checkpoint to resume from (or None for a fresh run); refuses a changed recipe. Called inside
    claimed_run_dir, which has already refused a folder that is not a run."""
    latest = runfiles.latest_checkpoint(run_dir)
    config_file = run_dir / runfiles.CONFIG_FILE
    if config_file.exists():
        # before the first checkpoint there is nothing to resume: a corrected recipe simply replaces the old one
        changed = differences(runfiles.read_config(run_dir), config) if latest else []
        if changed:
            raise ConfigError(f"{run_dir} holds a run with a different recipe (changed: {', '.join(changed)}); "
                              f"use a new run directory or the same settings to resume")
    # the newest checkpoint that verifies and is this run's (bad ones are set aside by rank 0, with a message)
    state = runfiles.load_resumable(run_dir, set_aside=dist.rank() == 0)
    if state is None:
        return None
    # batch_size is the global batch and each step's images and CPU augmentations depend only on their position
    # in it, so a run may resume on another number of processes as long as they split the batch evenly
    if config["batch_size"] % dist.world_size():
        raise ConfigError(f"{state['path']} trained with a global batch of {config['batch_size']} on "
                          f"{state['world_size']} processes; {dist.world_size()} processes cannot split it evenly. "
                          f"Resume on a process count that divides {config['batch_size']}")
    return state


def _agree_on_resume_step(resume: dict | None, run_dir: Path) -> None:
    """Every rank must resume from the same checkpoint: a run directory on node-local disk (or a node that
    cannot see the newest file yet) would otherwise silently train replicas from different states."""
    steps = dist.gather_ints(resume["step"] if resume else -1)
    if len(set(steps)) > 1:
        seen = ", ".join(f"rank {rank}: {'no checkpoint' if step < 0 else f'step {step}'}"
                         for rank, step in enumerate(steps))
        raise ConfigError(f"the processes see different checkpoints in {run_dir} ({seen}). The run directory must "
                          f"be on storage shared by every node (the same path on each), fully written before resuming")


# BatchNorm running statistics are per-process under DDP (each replica normalises its own batch, and DDP
# broadcasts the query encoder's from rank 0 at the next forward); everything else must agree bit for bit
_PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def replica_digest(state: dict) -> int:
    """A 63-bit digest of the part of a method's state_dict that every replica must share (parameters and
    non-BN buffers such as the MoCo queue or PIC's instance weights)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if name.rsplit(".", 1)[-1] in _PER_RANK_BUFFERS:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


class ReplicaDivergenceError(RuntimeError):
    """Two processes of one run hold different weights: a bug (or a faulty node), never a state to save."""


def _checked_replica_digests(method: torch.nn.Module, step: int) -> list[int]:
    digests = dist.gather_ints(replica_digest(method.state_dict()))
    if len(set(digests)) > 1:
        raise ReplicaDivergenceError(f"at step {step} the processes hold different weights (digests "
                                     f"{[hex(d) for d in digests]}); the last good checkpoint is kept")
    return digests


def pretrain(config: dict, run_dir: str | Path) -> Path:
    """One engine run: train (or resume) into run_dir; returns the final checkpoint path. Multi-phase
    methods (selftrain, distill) go through training.runner.pretrain, every method's entry point."""
    run_dir = Path(run_dir)
    setup = prepare(config)
    dist.init_from_env(setup.device)
    with claimed_run_dir(run_dir):
        return _train(config, run_dir, setup)


def _train(config: dict, run_dir: Path, setup: Setup) -> Path:
    rank, world = dist.rank(), dist.world_size()
    method, device = setup.method, setup.device
    optimizer = build_optimizer(method.trainable_module(), config["optimizer"], 0.0, config["momentum"],
                                config["weight_decay"], config["exclude_bn_bias"],
                                groups=method.parameter_groups(config["weight_decay"], config["exclude_bn_bias"])
                                if hasattr(method, "parameter_groups") else None)
    peak_lr = scaled_lr(config["lr"], config["batch_size"], config["lr_scaling"], config["lr_reference_batch"])
    on_device = augments_on_device(config["augment_device"], device)
    views = getattr(method, "views", 2)
    make_batches = getattr(method, "make_batches", StepBatches)
    if on_device:  # the loader only decodes + resizes; the random ops run batched on the device
        augment = BatchedViews(setup.spec, config["augment"])
        batches = make_batches(setup.source, raw_transform(setup.spec), config["batch_size"], config["seed"], rank,
                               world, views=1)
    else:
        transform = (cpu_views(setup.source, setup.spec, config["augment"]) if make_batches is StepBatches
                     else view_transform(setup.spec, config["augment"]))  # prepared sets: decode-aware views
        batches = make_batches(setup.source, transform, config["batch_size"], config["seed"], rank, world,
                               views=views)
    monitor = _knn_monitor(config, setup) if config["knn_every"] else None
    resume = open_run_dir(run_dir, config)
    if world > 1:  # every rank inspects the run dir before rank 0 writes to it (else a rank may see half of it)
        _agree_on_resume_step(resume, run_dir)
        dist.barrier()
    start, last_good = 0, None
    if resume:
        method.load_state_dict(resume["method"])
        optimizer.load_state_dict(resume["optimizer"])
        start, last_good = resume["step"], resume["path"]
    metrics = runfiles.MetricsLog(run_dir, enabled=rank == 0)
    if resume and resume["world_size"] != world:
        metrics.write(step=start, event="resumed", world_size=world, world_size_before=int(resume["world_size"]))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        runfiles.write_config(run_dir, config)
        metrics.truncate_after(start)
    # the layout is set before DDP builds its gradient buckets from it
    apply_memory_format(method, wants_channels_last(config["channels_last"], device, method.backbone,
                                                    setup.spec.image_size))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        method.set_runner(DistributedDataParallel(method.trainable_module(),
                                                  device_ids=ddp_device_ids(device)))
    if config["compile"]:
        method.set_runner(torch.compile(method._query_runner or method.query) if isinstance(method, MoCo)
                          else torch.compile(method._runner or method.trainable_module()))
    if resume:  # after everything that draws random numbers during setup
        restore_rng_states(resume["rng"], device)
    total = config["steps"]
    if start >= total:
        return last_good
    loader = step_loader(batches, start, total, config["num_workers"], pin_memory=pins_memory(device))
    method.train()
    from tqdm import tqdm

    progress = tqdm(total=total, initial=start, disable=not (config["progress"] and rank == 0),
                    desc=f"{config['method']} {config['data']}", dynamic_ncols=True, mininterval=2.0)
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    collapse_warned = False
    path = last_good
    with _SigtermFlag() as sigterm:
        for step, (view1, view2, indices) in zip(range(start, total), loader):
            lr = (step_lr if config.get("schedule") == "steps" else cosine_lr)(step, total, peak_lr,
                                                                                config["warmup_steps"])
            set_lr(optimizer, lr)
            if hasattr(method, "begin_step"):
                method.begin_step(step, lr)
            view1 = view1.to(device, non_blocking=True)
            if on_device:  # seeded by (seed, step, rank): a resumed run draws the same views
                generator = torch.Generator(device).manual_seed(
                    ((config["seed"] * 1_000_003 + step) * 65_537 + rank) % (1 << 63))
                raw = view1
                view1 = augment(raw, generator)
                view2 = augment(raw, generator) if views == 2 else None
            else:
                view2 = view2.to(device, non_blocking=True) if views == 2 else None
            with _autocast(device, config):
                loss = method(view1, view2, indices) if getattr(method, "uses_indices", False) else \
                    method(view1, view2)
            value = float(loss.detach())
            flags = _all_ranks_flags(not math.isfinite(value), sigterm.requested)
            if flags[0]:
                raise NonFiniteLossError(
                    f"loss is {value} at step {step} (lr {optimizer.param_groups[0]['lr']:.4g}); "
                    f"last good checkpoint: {last_good or 'none written yet'}. Lower lr, raise warmup_steps or "
                    f"check the data; rerunning resumes from that checkpoint.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["clip_grad"]:
                torch.nn.utils.clip_grad_norm_(method.trainable_module().parameters(), config["clip_grad"])
            optimizer.step()
            method.after_backward()
            done = step + 1
            window_loss, window_steps = window_loss + value, window_steps + 1
            progress.update(1)
            if done % config["log_every"] == 0 or done == total:
                elapsed = time.perf_counter() - window_start
                row = {"step": done, "loss": window_loss / window_steps, "lr": optimizer.param_groups[0]["lr"],
                       "images_per_s": window_steps * config["batch_size"] / max(elapsed, 1e-9)}
                if isinstance(method, MoCo):
                    row.update(method.pop_similarities())
                    warning = None if collapse_warned else collapse_message(
                        row, done, config["init"], setup.backbone.arch, config["trainable"])
                    if warning and rank == 0:
                        collapse_warned = True
                        runfiles.say(warning)
                metrics.write(**row)
                progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.3g}")
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if monitor and (done % config["knn_every"] == 0 or done == total):
                if rank == 0:
                    metrics.write(step=done, knn_top1=monitor(setup.backbone.module))
                dist.barrier()
                window_start = time.perf_counter()
            if done % config["checkpoint_every"] == 0 or done == total or flags[1]:
                digests = _checked_replica_digests(method, done) if world > 1 else None
                if rank == 0:
                    state = _state(done, setup, optimizer)
                    if digests:
                        state["replica_digests"] = torch.tensor(digests, dtype=torch.int64)
                    path = runfiles.save_checkpoint(run_dir, done, state, config["keep_checkpoints"])
                dist.barrier()
                path = runfiles.checkpoint_path(run_dir, done)
                last_good = path
            if flags[1]:
                progress.close()
                metrics.write(step=done, event="sigterm", checkpoint=str(path))
                raise Preempted(done, path)
    progress.close()
    return path


def _all_ranks_flags(nonfinite: bool, stop: bool) -> tuple[bool, bool]:
    if not dist.is_distributed():
        return nonfinite, stop
    flags = torch.tensor([int(nonfinite), int(stop)], dtype=torch.int32)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _knn_monitor(config: dict, setup: Setup):
    from .evaluate import knn_accuracy

    try:
        train = setup.source
        val = open_source(config["data"], "val", config["domain"])
        train.labels(), val.labels()
    except Exception as error:
        raise ConfigError(f"knn_every needs labelled train and val splits of {config['data']}: {error}") from None

    def monitor(backbone):
        return knn_accuracy(backbone, train, val, setup.spec, config["knn_k"], config["knn_t"],
                            config["knn_train_images"], config["knn_test_images"], device=setup.device)
    return monitor
