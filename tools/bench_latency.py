"""Measured latency of one or more checkpoints on every backend this machine has, side by side.

    python tools/bench_latency.py base.pt runs/prune/exp/weights/pruned.pt --imgsz 640 --out runs/latency

Backends: onnxruntime CPU at its default threads (the machine's cores) and at 1 thread, PyTorch CPU, and, when a CUDA
device is present, PyTorch CUDA, onnxruntime CUDA and TensorRT FP16 (onnxruntime's TensorRT provider); a GPU provider
that cannot start is left out with a warning (`--backends` keeps a subset). Per backend the models run one image at a
time: on onnxruntime each model alone in a fresh process, one after the other, the order flipped every repeat (see
`latency.time_alone`); on PyTorch in turns in short blocks (`latency.time_interleaved`). That measurement is repeated
`--repeat` times. The table gives median / min / max milliseconds, the speed-up over the first checkpoint, its MACs factor, and
the realization (speed-up / MACs factor: 1.0 means every MAC removed is time saved): the median over the repeats of
each repeat's own ratio, with the lowest and highest repeat beside it. Repeats, because a shared machine has slow
spells of 10-20 s that hit a small model harder than a large one: on this project's 2-vCPU machine, yolov8s and
itself pruned (MACs x3.95), one process, two threads, gave 0.82 to 0.99 from one 30-round measurement to the next
(the pruned model 37.6 ms in quiet spells, 48-51 ms in slow ones; the unpruned 144 and 160-166 ms).
`--dfl last-axis` gives every model the box decoder that the pruning runs export with (`patches.dfl`) before it is
exported and timed, so that an unpruned model is compared on the same head; by default each checkpoint runs as it
was saved (what `yolo export` of it gives). Writes latency.csv, latency.json and latency.png in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("backend", "model", "macs_G", "median_ms", "min_ms", "max_ms", "speedup", "macs_factor", "realization",
           "realization_low", "realization_high")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the checkpoints and options of the latency benchmark from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+",
                   help="checkpoints to compare, the first the reference; an .onnx file (e.g. an INT8 one) is timed as "
                        "it is, on onnxruntime only, with no MACs")
    p.add_argument("--imgsz", type=int, default=640, help="image size")
    p.add_argument("--rounds", type=int, default=20, help="timed interleaved rounds per repeat")
    p.add_argument("--repeat", type=int, default=3, help="independent interleaved measurements per backend")
    p.add_argument("--backends", default="", help="comma-separated parts of backend names to keep, e.g. 'onnxruntime'")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--dfl", choices=("saved", "last-axis"), default="saved",
                   help="box decoder: each checkpoint's own, or the last-axis twin for every model")
    p.add_argument("--out", default="runs/latency", help="output folder")
    return p.parse_args(argv)


def backends(models: list, onnx_files: list[Path], imgsz: int, wanted: list[str] | None = None) -> dict[str, Callable]:
    """How to measure each backend available here: name -> measure(rounds, warmup, reverse) -> per-model call times.

    onnxruntime backends time every model alone in a fresh process (`latency.time_alone`), one model after the other
    (`reverse` flips the order, so pairs alternate over the repeats); PyTorch backends run the models in turns in this
    process (`latency.time_interleaved`). `wanted` keeps the names containing one of these. A GPU provider that
    onnxruntime cannot start (missing CUDA, cuDNN or TensorRT libraries) is left out with a warning instead of being
    timed on the CPU it would fall back to.
    """
    import torch
    from ultralytics.utils import LOGGER

    from ultralytics_prune.measure.latency import time_alone, time_interleaved, torch_runner

    def alone(threads: int = 0, device: str = "cpu") -> Callable:
        def measure(rounds: int, warmup: int, reverse: bool) -> list[list[float]]:
            order = list(range(len(onnx_files)))[:: -1 if reverse else 1]
            times = time_alone([onnx_files[i] for i in order], imgsz, threads, device, rounds, warmup)
            return [times[order.index(i)] for i in range(len(onnx_files))]

        return measure

    def in_turns(device: str = "cpu") -> Callable:
        runners = [torch_runner(m, imgsz, device) for m in models]
        return lambda rounds, warmup, reverse: time_interleaved(runners, rounds, warmup)

    makers = {
        f"onnxruntime-cpu-{os.cpu_count()}threads": lambda: alone(),
        "onnxruntime-cpu-1thread": lambda: alone(threads=1),
        "torch-cpu": lambda: in_turns(),
    }
    if torch.cuda.is_available():
        makers["torch-cuda"] = lambda: in_turns("cuda")
        makers["onnxruntime-cuda"] = lambda: alone(device="cuda")
        makers["tensorrt-fp16"] = lambda: alone(device="tensorrt")
    found = {}
    for name, make in makers.items():
        if wanted and not any(w in name for w in wanted):
            continue
        if name.startswith("torch") and any(m is None for m in models):
            LOGGER.warning(f"bench_latency: {name} left out: an ONNX file was given, which runs on onnxruntime only")
            continue
        measure = make()
        if "cuda" in name or "tensorrt" in name:
            try:
                measure(1, 1, False)  # does the provider start at all?
            except RuntimeError as e:
                LOGGER.warning(f"bench_latency: {name} left out: {e}")
                continue
        found[name] = measure
    return found


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write the files; exit status 0 (2 for a checkpoint that is not there)."""
    from ultralytics.utils import TQDM
    from ultralytics_prune.patches.dfl import replace_dfl

    from ultralytics_prune.checkpoint import load_model, save_checkpoint
    from ultralytics_prune.measure.plots import plot_latency
    from ultralytics_prune.files import write_csv
    from ultralytics_prune.measure.report import count_macs_params, export_onnx

    args = parse_args(argv)
    missing = [c for c in args.checkpoints if not Path(c).is_file()]
    if missing:
        print(f"bench_latency: checkpoint not found: {', '.join(missing)} (pass .pt or .onnx files to compare)",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    names, models, onnx_files, macs = [], [], [], []
    for i, ckpt in enumerate(args.checkpoints):
        names.append(f"{i}:{Path(ckpt).stem}")
        if Path(ckpt).suffix == ".onnx":  # timed as it is, on onnxruntime only; its MACs are not counted
            models.append(None)
            macs.append(float("nan"))
            onnx_files.append(Path(ckpt).resolve())
            continue
        copy = out / "onnx" / f"{i}_{Path(ckpt).name}"
        copy.write_bytes(Path(ckpt).read_bytes())  # export beside a copy, never beside the user's file
        model = load_model(copy)
        if args.dfl == "last-axis" and replace_dfl(model):
            save_checkpoint(model, copy)
        models.append(model)
        macs.append(count_macs_params(model, args.imgsz)[0] / 1e9)
        onnx_files.append(export_onnx(copy, args.imgsz))
    rows = []
    runners = backends(models, onnx_files, args.imgsz, [b for b in args.backends.split(",") if b])
    bar = TQDM(total=len(runners) * args.repeat, desc="latency (backend x repeat)")
    for backend, measure in runners.items():
        times = []  # per repeat, per model: the timed calls (ms)
        for r in range(args.repeat):
            times.append(measure(args.rounds, args.warmup, r % 2 == 1))
            bar.update()
        medians = np.array([[np.median(t) for t in rep] for rep in times])  # (repeat, model)
        speedups = medians[:, :1] / medians  # each repeat's own ratios
        for i, (name, m) in enumerate(zip(names, macs)):
            factor = macs[0] / m
            rows.append({"backend": backend, "model": name, "macs_G": m, "median_ms": float(np.median(medians[:, i])),
                         "min_ms": min(min(rep[i]) for rep in times), "max_ms": max(max(rep[i]) for rep in times),
                         "speedup": float(np.median(speedups[:, i])), "macs_factor": factor,
                         "realization": float(np.median(speedups[:, i])) / factor,
                         "realization_low": float(speedups[:, i].min()) / factor,
                         "realization_high": float(speedups[:, i].max()) / factor,
                         "repeat_medians_ms": " ".join(f"{v:.2f}" for v in medians[:, i])})  # fmt: skip
    bar.close()
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
