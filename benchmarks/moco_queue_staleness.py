"""Why MoCo's training loss rises as the cosine lr reaches zero: the queue stops being stale.

For every checkpoint of a MoCo run, with the model frozen, the InfoNCE loss on the same held-out
batches is computed twice:
- with the queue the checkpoint stored, which holds keys from the key encoder of the last
  K/batch steps, as training sees it;
- with a queue refilled by the checkpoint's own key encoder.
When the stored-queue loss is far below the fresh-queue loss, the network is telling the current
positive key apart from older negatives partly by the encoder's drift, not by content. That
shortcut fades as the lr, and with it the drift, goes to zero, so the training loss rises toward
the fresh-queue value. The kNN monitor is the signal to watch; the MoCo loss is not comparable
across lr phases.

Whether the network tells images apart by content at all is the third column: the loss with the
batch's other keys as the only negatives (chance = log(batch size)), with the mean cosine of a
query to its positive key and to the other images' keys, and the mean pairwise cosine between
queries. A run whose queries all point the same way (spread -> 1) and whose positive is no closer
than the other keys has collapsed: whatever its queue loss, it is the drift shortcut alone
(issue 13: MobileNetV2 from scratch with the batch-32 recipe, benchmarks/RESULTS.md).

    python -m training pretrain --run RUN --method moco --data fashion_mnist --arch r18c --steps 400 \\
        --batch-size 64 --image-size 16 --knn-every 0 --checkpoint-every 100 --set keep_checkpoints=5
    python benchmarks/moco_queue_staleness.py RUN                # every checkpoint of the run
    python benchmarks/moco_queue_staleness.py RUN/checkpoints/step_0000400.pt   # one checkpoint
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from training import runfiles
from training.batches import StepBatches
from training.engine import prepare
from training.moco import batch_similarities, info_nce
from training.views import view_transform

EVAL_BATCHES = 8
DATA_SEED = 123  # not the run's seed: other images, other augmentations than any training step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a MoCo run directory (every checkpoint) or one checkpoint file of one")
    args = parser.parse_args()
    target = Path(args.run)
    run = target.parent.parent if target.is_file() else target
    config = runfiles.read_config(run)
    if config["method"] != "moco":
        raise SystemExit(f"{run} is a {config['method']} run; this check is about MoCo's queue")
    checkpoints = [(int(target.stem.split("_")[-1]), target)] if target.is_file() else runfiles.list_checkpoints(run)
    setup = prepare(dict(config))
    model = setup.method.train()  # train mode, as the loss is computed in training (batch statistics)
    batches = StepBatches(setup.source, view_transform(setup.spec, config["augment"]), config["batch_size"],
                          seed=DATA_SEED)
    torch.manual_seed(0)
    held_out = [batches[step][:2] for step in range(EVAL_BATCHES)]
    refill = [batches[EVAL_BATCHES + step][1] for step in range(config["queue_size"] // config["batch_size"])]

    @torch.no_grad()
    def measure(queue: torch.Tensor | None) -> dict:
        """Mean over the held-out batches; queue None = the batch's other keys are the negatives."""
        totals = {"loss": 0.0, "positive": 0.0, "other": 0.0, "spread": 0.0}
        for v1, v2 in held_out:
            query, key = model.encode_query(v1), model.encode_key(v2)
            if queue is not None:
                totals["loss"] += info_nce(query, key, queue, model.temperature).item()
                continue
            totals["loss"] += torch.nn.functional.cross_entropy(query @ key.t() / model.temperature,
                                                                torch.arange(len(query))).item()
            positive, other, spread = batch_similarities(query, key).tolist()
            totals["positive"] += positive
            totals["other"] += other
            totals["spread"] += spread
        return {k: v / len(held_out) for k, v in totals.items()}

    print(f"InfoNCE on {EVAL_BATCHES} held-out batches of {config['batch_size']}, queue {config['queue_size']}: "
          f"chance log(K+1) = {math.log(config['queue_size'] + 1):.2f}; with in-batch negatives only, "
          f"chance log(batch) = {math.log(config['batch_size']):.2f}")
    print(f"{'step':>6s} {'stored queue':>12s} {'refilled':>9s} {'in-batch':>9s} {'cos q.k+':>9s} {'cos q.k-':>9s} "
          f"{'q spread':>9s}")
    for step, path in checkpoints:
        model.load_state_dict(runfiles.load_checkpoint(path)["method"])
        stored = measure(model.queue.clone())["loss"]
        with torch.no_grad():
            fresh = measure(torch.cat([model.encode_key(view) for view in refill]))["loss"]
        batch = measure(None)
        print(f"{step:6d} {stored:12.3f} {fresh:9.3f} {batch['loss']:9.3f} {batch['positive']:9.4f} "
              f"{batch['other']:9.4f} {batch['spread']:9.4f}", flush=True)


if __name__ == "__main__":
    main()
