"""Measured latency of one or more checkpoints on every backend this machine has, side by side.

    python tools/bench_latency.py base.pt runs/prune/exp/weights/pruned.pt --imgsz 640 --out runs/latency

Backends: onnxruntime CPU at its default threads (the machine's cores) and at 1 thread, PyTorch CPU, and, when a CUDA
device is present, PyTorch CUDA and onnxruntime CUDA (TensorRT is not measured yet). Per backend the models run one
image at a time, taking turns in short blocks (see `latency.time_interleaved`); the table gives median / min / max
milliseconds, the speed-up over the first checkpoint, its MACs factor, and the realization (speed-up / MACs factor:
1.0 means every MAC removed is time saved). `--dfl last-axis` gives every model the box decoder that pruned models are
saved with (`patches.dfl`) before it is exported and timed, so that an unpruned model is compared on the same head; by
default each checkpoint runs as it was saved (what `yolo export` of it gives).
The default-thread backend is timed first: timed after the one-thread runs, yolov8s against itself pruned measured
x3.37 on two threads (165 vs 49 ms), where each model alone in a fresh process runs in 145 and 38 ms (x3.78).
Writes latency.csv, latency.json and latency.png in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("backend", "model", "macs_G", "median_ms", "min_ms", "max_ms", "speedup", "macs_factor", "realization")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the checkpoints and options of the latency benchmark from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints to compare; the first is the reference")
    p.add_argument("--imgsz", type=int, default=640, help="image size")
    p.add_argument("--rounds", type=int, default=50, help="timed interleaved rounds per backend")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--dfl", choices=("saved", "last-axis"), default="saved",
                   help="box decoder: each checkpoint's own, or the last-axis twin for every model")
    p.add_argument("--out", default="runs/latency", help="output folder")
    return p.parse_args(argv)


def backends(models: list, onnx_files: list[Path], imgsz: int) -> dict[str, list]:
    """Runners per backend available here: name -> one runner per model."""
    import onnxruntime as ort
    import torch

    from ultralytics_prune.latency import onnx_runner, torch_runner

    found = {
        f"onnxruntime-cpu-{os.cpu_count()}threads": [onnx_runner(f, imgsz) for f in onnx_files],
        "onnxruntime-cpu-1thread": [onnx_runner(f, imgsz, threads=1) for f in onnx_files],
        "torch-cpu": [torch_runner(m, imgsz) for m in models],
    }
    if torch.cuda.is_available():
        found["torch-cuda"] = [torch_runner(m, imgsz, "cuda") for m in models]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            found["onnxruntime-cuda"] = [onnx_runner(f, imgsz, provider="CUDAExecutionProvider") for f in onnx_files]
    return found


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write the files; exit status 0."""
    import numpy as np
    from ultralytics.utils import TQDM
    from ultralytics_prune.patches.dfl import replace_dfl

    from ultralytics_prune.checkpoint import load_model, save_checkpoint
    from ultralytics_prune.latency import time_interleaved
    from ultralytics_prune.plots import plot_latency
    from ultralytics_prune.report import count_macs_params, export_onnx, write_csv

    args = parse_args(argv)
    out = Path(args.out).resolve()
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    names, models, onnx_files, macs = [], [], [], []
    for i, ckpt in enumerate(args.checkpoints):
        copy = out / "onnx" / f"{i}_{Path(ckpt).name}"
        copy.write_bytes(Path(ckpt).read_bytes())  # export beside a copy, never beside the user's file
        model = load_model(copy)
        if args.dfl == "last-axis" and replace_dfl(model):
            save_checkpoint(model, copy)
        names.append(f"{i}:{Path(ckpt).stem}")
        models.append(model)
        macs.append(count_macs_params(model, args.imgsz)[0] / 1e9)
        onnx_files.append(export_onnx(copy, args.imgsz))
    rows = []
    runners = backends(models, onnx_files, args.imgsz)
    for backend, calls in TQDM(runners.items(), desc="latency backends", total=len(runners)):
        times = time_interleaved(calls, args.rounds, args.warmup)
        base = float(np.median(times[0]))
        for name, m, t in zip(names, macs, times):
            median = float(np.median(t))
            speedup, factor = base / median, macs[0] / m
            rows.append({"backend": backend, "model": name, "macs_G": m, "median_ms": median, "min_ms": min(t),
                         "max_ms": max(t), "speedup": speedup, "macs_factor": factor,
                         "realization": speedup / factor})  # fmt: skip
    write_csv(rows, out / "latency.csv")
    (out / "latency.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    plot_latency(rows, out / "latency.png")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |"
              for r in rows]  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
