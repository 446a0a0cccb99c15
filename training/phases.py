"""The pieces of a multi-phase method (self-training, SimCLR v2 distillation) that its phases and the
chain share: hand-over files, a phase's network and lineage record. The chain runs in training.runner.

    RUN/config.yaml            the method's recipe (a changed recipe is refused, as for any run)
    RUN/<phase>/               one engine run per phase (its own config, checkpoints, metrics): each
                               resumes on its own, so the chain resumes where it stopped
    RUN/<phase>.pt             data handed from one phase to the next (pseudo-labels), written once
    RUN/checkpoints/step_N.pt  the last phase's checkpoint with the chain's lineage: what export reads
Every phase runs under the same processes (torchrun): rank 0 writes the hand-over files, the others
wait at a barrier and read them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import dist, runfiles
from .models import Backbone
from .views import InputSpec


def hand_over(path: Path, make) -> dict:
    """`make()`'s tensors, computed once by rank 0 and saved atomically; every rank returns them."""
    if not path.exists() and dist.rank() == 0:
        import io

        buffer = io.BytesIO()
        torch.save(make(), buffer)
        runfiles.atomic_write_bytes(path, buffer.getvalue())
    dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True)


def backbone_of(state: dict) -> Backbone:
    """A fresh module of the checkpoint's architecture (weights loaded by the caller)."""
    from zoo.build import create_model

    arch = state["arch"]
    module = create_model(arch["timm_arch"], 0, arch["model_args"])
    return Backbone(module, arch["arch"], arch["timm_arch"], arch["model_args"], arch["num_features"])


def classifier_from(state: dict, prefix: str = "model.") -> tuple[torch.nn.Module, InputSpec]:
    """The trained classifier (backbone + head) of a supervised-style phase checkpoint, in eval mode."""
    from .supervised import classifier

    weights = {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}
    head = [k for k in weights if k.startswith("head.") and k.endswith(".weight")]
    classes = weights[sorted(head)[-1]].shape[0]
    backbone = backbone_of(state)
    model = classifier(backbone.module, backbone.num_features, classes, state["config"].get("dropout", 0.0))
    model.load_state_dict(weights)
    return model.eval(), InputSpec(**state["spec"])


def phase_record(role: str, phase: str, checkpoint: Path, backbone_prefix: str = "model.backbone.") -> dict:
    """Lineage entry of one phase: what it was, where it started, the sha256 of its backbone weights."""
    from .export import _sha_of

    state = runfiles.load_checkpoint(checkpoint)
    config = state["config"]
    weights = {k[len(backbone_prefix):]: v for k, v in state["method"].items() if k.startswith(backbone_prefix)}
    init = (state.get("init") or {}).get("name") or "random"
    return {"role": role, "phase": phase, "method": config["method"], "arch": state["arch"]["arch"],
            "steps": int(state["step"]), "init": init, "sha256": _sha_of(weights)}


def finish_chain(config: dict, run_dir: Path, last: Path, lineage: list[dict], **extra) -> Path:
    """RUN/checkpoints/step_N.pt = the last phase's checkpoint, with the chain's recipe and lineage."""
    state = runfiles.load_checkpoint(last)
    state.update(config=config, lineage=lineage, **extra)
    if dist.rank() == 0:
        runfiles.save_checkpoint(run_dir, int(state["step"]), state, config["keep_checkpoints"])
    dist.barrier()
    return runfiles.checkpoint_path(run_dir, int(state["step"]))


def init_record(config: dict) -> dict:
    """How the final network was initialised: random, or the zoo checkpoint `init` (and its strategy)."""
    if not config.get("init"):
        return {"role": "init", "name": "random", "kind": "random"}
    name = str(config["init"])
    kind = "checkpoint"
    try:
        import zoo
        strategy = zoo.info(name).get("strategy")
        kind = "supervised" if strategy == "sup" else ("self-supervised" if strategy else kind)
    except Exception:  # an unnamed folder: the base record in the lineage says what it is
        strategy = None
    return {"role": "init", "name": name, "kind": kind, "strategy": strategy}
