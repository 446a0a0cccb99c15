"""PIC's step cost against the number of instance classes N (10k, 100k, 1.28M), side by side in one run.

The same network and batch for every N; one PIC head per N sharing one backbone, their steps
interleaved round by round (so machine load hits each N alike), median per N. Each table is put
in mid-run state first: a history of `--history` recorded steps (the lazy correction's table), rows
last updated at random earlier steps (so sampled rows need real catch-up), a full FIFO of the
last K/B batches' ids (updated in the steps that sampled them). Reported per N: the whole training step (forward, backward, SGD, PIC's row update), the PIC
part alone (row catch-up, cosine-logit loss and its backward, row update; no backbone), the bytes
of the N-sized state (weights, momentum, last-update step), and a step's peak memory above the
resident state (CUDA: max_memory_allocated; Linux CPU: the VmHWM high-water mark, reset per step).
Goal: the 1.28M step within 1.2x of the 10k step.

    python benchmarks/pic_scaling.py                         # r18 at 32 px, batch 64, K 4096
    python benchmarks/pic_scaling.py --device cuda --arch r50 --size 224 --batch 256 --negatives 65536
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from training.models import build_backbone
from training.pic import PIC

SIZES = {"10k": 10_000, "100k": 100_000, "1.28M": 1_281_167}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_above(device, resident_before: int) -> float | None:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - resident_before) / 2 ** 20
    high = _status_kb("VmHWM")
    return None if high is None else (high * 1024 - resident_before) / 2 ** 20


def _resident(device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return (_status_kb("VmRSS") or 0) * 1024


def mid_run_state(pic: PIC, history: int, lr: float, generator: torch.Generator, args_batch: int) -> None:
    rows = pic.classes
    for step in range(history):
        rows.record_lr(lr * (0.5 + 0.5 * ((step * 7919) % 101) / 101))  # varying lrs: no closed form shortcut
    count, negatives, batch = rows.weight.shape[0], pic.recent.shape[0], args_batch
    rows.updated_to.copy_(torch.randint(0, history, (count,), generator=generator))
    # the FIFO holds the last K/B batches' ids; each was last updated in the step that sampled it
    recent = torch.randperm(count, generator=generator)[:negatives]
    pic.recent.copy_(recent)
    rows.updated_to[recent] = history - (negatives - torch.arange(negatives)) // batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="r18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=4096)
    parser.add_argument("--history", type=int, default=20_000, help="steps already run when timing starts")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = build_backbone(args.arch, 3)
    backbone.module.to(device).train()
    heads = {}
    for label, count in SIZES.items():
        before = _resident(device)
        pic = PIC(backbone.module, backbone.num_features, count, dim=128, hidden=512, negatives=args.negatives,
                  momentum=0.9, weight_decay=1e-4).to(device)
        mid_run_state(pic, args.history, 0.03, generator, args.batch)
        state_mb = sum(t.numel() * t.element_size() for t in (pic.classes.weight, pic.classes.velocity,
                                                            pic.classes.updated_to)) / 2 ** 20
        optimizer = torch.optim.SGD(pic.encoder.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
        heads[label] = dict(pic=pic, count=count, optimizer=optimizer, state_mb=state_mb, full=[], part=[], peak=[],
                            resident_mb=(_resident(device) - before) / 2 ** 20)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def full_step(head, step):
        pic, optimizer = head["pic"], head["optimizer"]
        ids = torch.randint(0, head["count"], (args.batch,), generator=generator)
        pic.begin_step(pic.classes.steps, 0.03)
        loss = pic(images, None, ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pic.after_backward()

    def pic_part(head, step):
        """Row catch-up + cosine-logit loss + backward + row update on fixed features (no backbone)."""
        pic = head["pic"]
        ids = torch.randint(0, head["count"], (args.batch,), generator=generator)
        pic.begin_step(pic.classes.steps, 0.03)
        z = torch.randn(args.batch, 128, device=device, requires_grad=True)
        classes = torch.unique(torch.cat([ids.to(device), pic.recent]))
        weight, velocity = pic.classes.current(classes)
        weight = weight.detach().requires_grad_(True)
        from training.pic import pic_loss
        pic_loss(z, weight, torch.searchsorted(classes, ids.to(device)), pic.temperature).backward()
        pic.classes.step(classes, weight.detach(), velocity, weight.grad)

    step = 0
    for round_index in range(args.rounds + 2):  # 2 warm-up rounds, not counted
        for head in heads.values():
            for kind, function in (("full", full_step), ("part", pic_part)):
                sync()
                resident = _resident(device)
                tracked = _reset_peak(device) and kind == "full"
                start = time.perf_counter()
                function(head, step)
                sync()
                elapsed = time.perf_counter() - start
                step += 1
                if round_index >= 2:
                    head[kind].append(elapsed)
                    if tracked:
                        head["peak"].append(_peak_above(device, resident))
    print(f"PIC step cost vs N: {args.arch} {args.size}px, batch {args.batch}, K {args.negatives} recent negatives, "
          f"{args.history} steps of history, {args.rounds} interleaved rounds, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'N':>8} {'N-state MB':>11} {'step ms':>9} {'PIC part ms':>12} {'step peak MB above resident':>28}")
    for label, head in heads.items():
        peaks = [p for p in head["peak"] if p is not None]
        peak = f"{max(peaks):.1f}" if peaks else "n/a"
        head["step_ms"] = 1000 * statistics.median(head["full"])
        head["part_ms"] = 1000 * statistics.median(head["part"])
        print(f"{label:>8} {head['state_mb']:11.1f} {head['step_ms']:9.1f} {head['part_ms']:12.2f} {peak:>28}")
    small, large = heads["10k"], heads["1.28M"]
    print(f"pic part time ratio 1.28M vs 10k: {large['part_ms'] / small['part_ms']:.2f}x")
    print(f"pic step time ratio 1.28M vs 10k: {large['step_ms'] / small['step_ms']:.2f}x")


if __name__ == "__main__":
    main()
