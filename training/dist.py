"""The few torch.distributed helpers the methods and the engine need; all are no-ops in one process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launch_rank() -> int:
    """This process's rank, also before the process group exists (setup runs first): torchrun's RANK."""
    if is_distributed():
        return rank()
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU)."""
    if launched_by_torchrun() and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank in rank order (no gradient flows back)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate across ranks keeping the autograd graph: every rank's loss reaches every rank's
    inputs (SimCLR's global negatives). The backward sums gradients over ranks."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()))


def gather_ints(value: int) -> list[int]:
    """One integer from every rank, in rank order (a plain list in one process)."""
    if not is_distributed():
        return [int(value)]
    parts = gather_no_grad(torch.tensor([int(value)], dtype=torch.int64))
    return [int(v) for v in parts.tolist()]


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(tensor, source)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a SIGTERM seen by a single process stops all)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
