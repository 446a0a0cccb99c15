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

    python -m training pretrain --run RUN --method moco --data fashion_mnist --arch r18c --steps 400 \\
        --batch-size 64 --image-size 16 --knn-every 0 --checkpoint-every 100 --set keep_checkpoints=5
    python benchmarks/moco_queue_staleness.py RUN
"""
from __future__ import annotations

import argparse

import torch

from training import runfiles
from training.batches import StepBatches
from training.engine import prepare
from training.moco import info_nce
from training.views import view_transform

EVAL_BATCHES = 8
DATA_SEED = 123  # not the run's seed: other images, other augmentations than any training step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a MoCo run directory with several checkpoints")
    args = parser.parse_args()
    config = runfiles.read_config(args.run)
    if config["method"] != "moco":
        raise SystemExit(f"{args.run} is a {config['method']} run; this check is about MoCo's queue")
    setup = prepare(dict(config))
    model = setup.method.train()  # train mode, as the loss is computed in training (batch statistics)
    batches = StepBatches(setup.source, view_transform(setup.spec, config["augment"]), config["batch_size"],
                          seed=DATA_SEED)
    torch.manual_seed(0)
    held_out = [batches[step][:2] for step in range(EVAL_BATCHES)]
    refill = [batches[EVAL_BATCHES + step][1] for step in range(config["queue_size"] // config["batch_size"])]

    @torch.no_grad()
    def mean_loss(queue: torch.Tensor) -> float:
        return sum(info_nce(model.encode_query(v1), model.encode_key(v2), queue, model.temperature).item()
                   for v1, v2 in held_out) / len(held_out)

    print(f"InfoNCE on {EVAL_BATCHES} held-out batches of {config['batch_size']}, queue {config['queue_size']}, "
          f"chance level log(K+1) = {torch.tensor(config['queue_size'] + 1.0).log():.2f}")
    for step, path in runfiles.list_checkpoints(args.run):
        model.load_state_dict(runfiles.load_checkpoint(path)["method"])
        stored = mean_loss(model.queue.clone())
        with torch.no_grad():
            fresh = torch.cat([model.encode_key(view) for view in refill])
        print(f"step {step:6d}: stored (stale) queue {stored:.3f}   refilled by the current key encoder "
              f"{mean_loss(fresh):.3f}", flush=True)


if __name__ == "__main__":
    main()
