"""MoCo v2 training-step throughput on CPU: ours vs a bare hand-written loop vs lightly's parts.

All three run the same math on the same model, batch, queue and resolution: ResNet-18 (3x3 stem)
backbone, 2-layer MLP head, momentum key encoder, key batch shuffled before the key encoder, a queue
of K negatives, InfoNCE at temperature T, SGD with momentum. They are timed in interleaved rounds in
one process, the order rotated every round, so background load hits them alike.

"ours" is MoCo as the engine runs it, in the layout its channels_last="auto" picks (NHWC, oneDNN's
faster path on CPU, unless the feature maps shrink below 2x2); "ours_nchw" is the same code in the
default layout the other two use, to separate the layout's gain from the code's overhead.

    python benchmarks/train_step.py [--batch 64] [--size 32] [--queue 4096] [--rounds 3] [--steps 3]
The last line reads: moco step speedup vs lightly: X.XXx
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from training.engine import apply_memory_format, wants_channels_last
from training.models import build_backbone
from training.moco import MoCo

DIM, HIDDEN, EMA, TEMPERATURE, LR = 128, 512, 0.99, 0.1, 0.06


def ours(backbone, queue_size, size, channels_last="auto"):
    """MoCo as the engine runs it, in the layout the engine's channels_last="auto" picks."""
    model = MoCo(backbone, backbone.num_features, DIM, HIDDEN, queue_size, EMA, TEMPERATURE, bn_splits=1)
    apply_memory_format(model, wants_channels_last(channels_last, torch.device("cpu"), backbone, size))
    optimizer = torch.optim.SGD(model.query.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)

    def step(x1, x2):
        loss = model(x1, x2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_backward()
    return step


def bare(backbone, queue_size):
    """The same math written out in one function, nothing factored."""
    head = nn.Sequential(nn.Linear(backbone.num_features, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, DIM))
    query = nn.Sequential(backbone, head)
    key = copy.deepcopy(query).requires_grad_(False)
    queue = F.normalize(torch.randn(queue_size, DIM), dim=1)
    state = {"ptr": 0}
    optimizer = torch.optim.SGD(query.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)

    def step(x1, x2):
        with torch.no_grad():
            for k, q in zip(key.parameters(), query.parameters()):
                k.mul_(EMA).add_(q, alpha=1 - EMA)
            order = torch.randperm(x2.shape[0])
            shuffled = key(x2[order])
            k_out = torch.empty_like(shuffled)
            k_out[order] = shuffled
            k_out = F.normalize(k_out, dim=1)
        q_out = F.normalize(query(x1), dim=1)
        logits = torch.cat([(q_out * k_out).sum(1, keepdim=True), q_out @ queue.t()], dim=1) / TEMPERATURE
        loss = F.cross_entropy(logits, torch.zeros(x1.shape[0], dtype=torch.long))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            n, p = k_out.shape[0], state["ptr"]
            queue[p:p + n] = k_out  # K is a multiple of the batch here
            state["ptr"] = (p + n) % queue_size
    return step


def lightly_parts(backbone, queue_size):
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.modules.memory_bank import MemoryBankModule
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    head = MoCoProjectionHead(backbone.num_features, HIDDEN, DIM)
    key_backbone, key_head = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(key_backbone), deactivate_requires_grad(key_head)
    bank = MemoryBankModule(size=(queue_size, DIM))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)

    def step(x1, x2):
        update_momentum(backbone, key_backbone, EMA)
        update_momentum(head, key_head, EMA)
        with torch.no_grad():
            order = torch.randperm(x2.shape[0])
            shuffled = key_head(key_backbone(x2[order]))
            k_out = torch.empty_like(shuffled)
            k_out[order] = shuffled
            k_out = F.normalize(k_out, dim=1)
        q_out = F.normalize(head(backbone(x1)), dim=1)
        k_out, negatives = bank(k_out, update=True)  # returns a clone of the bank, then enqueues
        logits = torch.cat([(q_out * k_out).sum(1, keepdim=True), q_out @ negatives], dim=1) / TEMPERATURE
        loss = F.cross_entropy(logits, torch.zeros(x1.shape[0], dtype=torch.long))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--queue", type=int, default=4096)
    parser.add_argument("--arch", default="r18c")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    x1, x2 = torch.randn(args.batch, 3, args.size, args.size), torch.randn(args.batch, 3, args.size, args.size)
    steps = {}
    implementations = (("ours", lambda b, q: ours(b, q, args.size)),
                       ("ours_nchw", lambda b, q: ours(b, q, args.size, channels_last=False)),
                       ("bare", bare), ("lightly", lightly_parts))
    for name, make in implementations:
        torch.manual_seed(0)
        steps[name] = make(build_backbone(args.arch, 3).module.train(), args.queue)
        steps[name](x1, x2)  # warm-up (allocator, oneDNN primitive cache)
    seconds = {name: 0.0 for name in steps}
    names = list(steps)
    for round_index in range(args.rounds):
        # rotate the order every round so no implementation always runs first or last (caches, turbo)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name](x1, x2)
            seconds[name] += time.perf_counter() - start
    images = args.rounds * args.steps * args.batch
    rate = {name: images / value for name, value in seconds.items()}
    layout = "NHWC" if wants_channels_last("auto", torch.device("cpu"), build_backbone(args.arch, 3).module,
                                           args.size) else "NCHW"
    print(f"MoCo v2 step, {args.arch} {args.size}px, batch {args.batch}, queue {args.queue}, ours in {layout}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds}x{args.steps} steps each")
    for name, value in rate.items():
        print(f"{name:>8}: {value:8.1f} img/s  ({seconds[name] / (args.rounds * args.steps) * 1000:.0f} ms/step)")
    print(f"ours in the others' layout (NCHW) vs lightly: {rate['ours_nchw'] / rate['lightly']:.2f}x; "
          f"vs bare loop: {rate['ours_nchw'] / rate['bare']:.3f}x")
    print(f"ours / bare loop: {rate['ours'] / rate['bare']:.3f}x (time ratio bare/ours)")
    print(f"moco step speedup vs lightly: {rate['ours'] / rate['lightly']:.2f}x")


if __name__ == "__main__":
    main()
