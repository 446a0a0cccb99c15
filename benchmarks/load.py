"""Load-time benchmark: zoo.load vs timm vs the floor (warm cache), and cold load through olah vs raw GET.

    .venv/bin/python benchmarks/load.py [--repeats 15]

Everything is measured side by side in one run (interleaved repeats, medians), since machines
are noisy. Models: ResNet-50 (a random-init trunk in the zoo format: load time does not depend on
the values) and the real MobileNetV2, both with a 1000-class classifier so every contender does
the same work. The last line is `zoo.load warm speedup vs timm: X.XXx` (ResNet-50).
"""
from __future__ import annotations

import os
import socket
import sys

# huggingface_hub (imported by timm) reads these once, at import: set them first.
with socket.socket() as _sock:
    _sock.bind(("127.0.0.1", 0))
    PORT = _sock.getsockname()[1]
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


def median_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_resnet50(folder: Path) -> Path:
    import timm

    from zoo.checkpoint import timm_config, write_checkpoint

    model = timm.create_model("resnet50", num_classes=1000)
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k in ("input_size", "mean", "std", "interpolation",
                                                                  "crop_pct")}
    meta = {"name": "bench-imagenet-r50", "strategy": "moco", "method": "benchmark (random weights)", "arch": "r50",
            "domain": "imagenet", "lineage": [], "summary": "random weights, for load-time measurement only"}
    return write_checkpoint(folder, model.state_dict(), timm_config("resnet50", 1000, 2048, cfg), meta)


def raw_get(url: str, destination: Path) -> None:
    import httpx

    with httpx.stream("GET", url, timeout=120) as response, open(destination, "wb") as handle:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            handle.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cold-repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    os.environ["ZOO_HOME"] = str(work / "zoo-home")
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(work / "hub")
    from safetensors.torch import load_file

    import timm
    import zoo
    from zoo.catalog import resolve
    from zoo.defaults import prepare_mirror
    from zoo.mirror import serve
    from zoo.publish import publish

    mirror = work / "mirror"
    prepare_mirror(mirror)
    r50 = make_resnet50(work / "r50")
    publish(r50, "bench/bench-imagenet-r50", mirror=mirror, catalog=work / "catalog.json", name="bench-imagenet-r50")
    os.environ["ZOO_CATALOG"] = str(work / "catalog.json")

    print(f"torch {torch.__version__}, timm {timm.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}")
    speedups = {}
    with serve(mirror, PORT) as endpoint:
        for name, arch in (("bench-imagenet-r50", "resnet50"), ("sup-imagenet-mnv2", "mobilenetv2_100")):
            entry, _ = resolve(name)
            record = entry.file("model.safetensors")
            url = f"{endpoint}/{entry.repo_id}/resolve/{entry.revision}/model.safetensors"
            # cold: a fresh cache each time; zoo.load = HEAD + GET + sha256 + build
            cold_zoo, cold_raw = [], []
            for index in range(args.cold_repeats):
                constants.HF_HUB_CACHE = str(work / f"cold-{name}-{index}")
                start = time.perf_counter()
                zoo.load(name, num_classes=None)
                cold_zoo.append(time.perf_counter() - start)
                start = time.perf_counter()
                raw_get(url, work / "raw.bin")
                cold_raw.append(time.perf_counter() - start)
            size_mb = record["size"] / 1e6
            zoo_tp, raw_tp = size_mb / statistics.median(cold_zoo), size_mb / statistics.median(cold_raw)
            print(f"{arch}: cold through olah ({size_mb:.0f} MB): zoo.load {zoo_tp:.0f} MB/s (download + verify + "
                  f"build) vs raw GET {raw_tp:.0f} MB/s -> {zoo_tp / raw_tp:.2f}x")
            # warm: the file is cached and stamped
            path = zoo.fetch.fetch(entry, "model.safetensors")

            def with_zoo():
                return zoo.load(name, num_classes=None)

            def with_timm():
                return timm.create_model(arch, pretrained=True, num_classes=1000,
                                         pretrained_cfg_overlay=dict(file=path))

            def floor():  # safetensors read + plain meta-device build + assign
                with torch.device("meta"):
                    model = timm.create_model(arch, num_classes=1000)
                model.load_state_dict(load_file(path), assign=True)
                return model

            def floor_without_init():  # the same, but skipping weight-init ops on meta as zoo does
                model = zoo.build.create_on_meta(arch, 1000)
                model.load_state_dict(load_file(path), assign=True)
                return model

            contenders = {"zoo": with_zoo, "timm": with_timm, "floor": floor, "floor_noinit": floor_without_init}
            for function in contenders.values():
                function()  # warm imports and the page cache
            timings = {key: [] for key in contenders}
            for _ in range(args.repeats):  # interleaved so drift hits all contenders alike
                for key, function in contenders.items():
                    timings[key].append(median_time(function, 1))
            zoo_s, timm_s, floor_s, bare_s = (statistics.median(timings[k]) for k in contenders)
            speedups[arch] = timm_s / zoo_s
            print(f"{arch}: warm load median of {args.repeats}: zoo.load {zoo_s * 1000:.1f} ms, timm pretrained "
                  f"{timm_s * 1000:.1f} ms, floor {floor_s * 1000:.1f} ms -> {timm_s / zoo_s:.2f}x faster than timm, "
                  f"{zoo_s / floor_s:.2f}x the floor; no-init floor {bare_s * 1000:.1f} ms -> {zoo_s / bare_s:.2f}x it")
    shutil.rmtree(work, ignore_errors=True)
    print(f"zoo.load warm speedup vs timm: {speedups['resnet50']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
