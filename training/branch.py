"""The engine's interface for methods that train one network (no key encoder, no second branch).

Supervised, rotation, PIC, the self-training student and SimCLR v2's fine-tune/distillation phases
all train `nn.Sequential(backbone=..., head=...)` held under one attribute. Its name (`branch`) is the
prefix of the network's keys in the checkpoint and the export, so each method keeps its own name
("model" for the classifiers, "encoder" for the pretext heads).

The engine calls, on every method: `trainable_module()` (what the optimizer and DDP wrap),
`set_runner(runner)` (the DDP/compiled wrapper to run the forward through), `reset_key_encoder()`
(after loading a base), `after_backward()` (after the gradient, before the optimizer step),
`head_state_dict()` (exported with --heads) and `backbone` (what is exported).
"""
from __future__ import annotations

import torch
from torch import nn


class OneBranch(nn.Module):
    branch = "model"  # the attribute holding nn.Sequential(backbone=..., head=...)
    views = 1

    def __init__(self):
        super().__init__()
        self._runner = None

    @property
    def backbone(self) -> nn.Module:
        return self.trainable_module().backbone

    def trainable_module(self) -> nn.Module:
        return getattr(self, self.branch)

    def set_runner(self, runner: nn.Module) -> None:
        object.__setattr__(self, "_runner", runner)  # not a submodule: its weights are the branch's

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The branch's forward, through the engine's wrapper when there is one (DDP's gradient sync)."""
        return (self._runner or self.trainable_module())(images)

    def reset_key_encoder(self) -> None:
        """One branch: no key encoder to copy the base into."""

    def after_backward(self) -> None:
        """Nothing outside the optimizer to update."""

    def head_state_dict(self) -> dict:
        return {f"head.{k}": v for k, v in self.trainable_module().head.state_dict().items()}
