"""Side-by-side accuracy and speed of the pruning recipes on the same data and the same epoch budget.

    python tools/benchmark.py --data D --model best.pt --rate 0.5 --epochs N --imgsz S --out DIR

Rows (each given `--epochs` epochs of training in all, on the same data):
  base      the input checkpoint as it is
  prune     `yolo prune` with its defaults, `--steps` steps of epochs/steps fine-tune epochs
  attention the same with `attention=prune` (attention heads cut too)
  latency   the same with `latency_aware=True` (channels ranked by importance per millisecond on onnxruntime)
  distill   the same with the input checkpoint as teacher (`distill=True`)
  slim      sparsity training from the input (`sr`, half the epochs), `yolo slim` at the rate, fine-tune (the rest)
  scratch   the architecture `prune` ended with, re-initialised and trained from scratch for `--epochs`

Writes benchmark.csv, benchmark.json, benchmark.md and benchmark.png (mAP50-95 against MACs and against measured
latency) in `--out` and prints the table: MACs, parameters, box mAP50 and mAP50-95, the task's own mAP50-95 (mask
or pose; the box one for detect and OBB), onnxruntime CPU latency (interleaved runs, medians) and wall time per row.
A row that fails is reported in its `error` column; the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = ("base", "prune", "attention", "latency", "distill", "slim", "scratch")
COLUMNS = ("row", "macs_G", "params_M", "mAP50", "mAP50-95", "task_mAP50-95", "onnx_ms", "speedup", "train_epochs",
           "wall_s", "error")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's options from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset yaml")
    p.add_argument("--model", required=True, help="trained checkpoint (the base row)")
    p.add_argument("--rate", type=float, default=0.5, help="channel pruning rate of prune, distill and slim")
    p.add_argument("--epochs", type=int, default=20, help="training epochs each row gets in all")
    p.add_argument("--steps", type=int, default=2, help="iterative pruning steps of prune and distill")
    p.add_argument("--speedup", type=float, default=0.0,
                   help="prune rows stop at this speed-up instead of at --rate (see --speedup-by)")
    p.add_argument("--speedup-by", choices=("latency", "macs"), default="latency",
                   help="what --speedup divides: onnxruntime CPU latency, or MACs (one end point for every prune row)")
    p.add_argument("--imgsz", type=int, default=640, help="image size")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--sr", type=float, default=0.005, help="sparsity strength of the slim row's sparsity training")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--out", default="runs/benchmark", help="output folder")
    return p.parse_args(argv)


class Benchmark:
    """Runs the rows one after the other into `out`, then measures them all alike."""

    def __init__(self, args: argparse.Namespace):
        """Keep the options; every run goes under `args.out`."""
        self.args = args
        self.out = Path(args.out).resolve()
        self.common = dict(data=args.data, imgsz=args.imgsz, batch=args.batch, workers=2, plots=False, exist_ok=True)
        self.checkpoints: dict[str, Path] = {}

    def base(self) -> Path:
        """The input checkpoint itself (no training)."""
        return Path(self.args.model)

    def prune(self, name: str = "prune", **keys) -> Path:
        """`yolo prune` with its defaults at `rate`, `steps` steps, the epochs spread evenly over them (plus `keys`)."""
        from ultralytics_prune.model import run_recipe

        goal = {"speedup": self.args.speedup, "speedup_by": self.args.speedup_by} if self.args.speedup else {}
        return run_recipe("prune", {**self.common, "model": self.args.model, "rate": self.args.rate,
                                    "iterative_steps": self.args.steps, "epochs": self.args.epochs // self.args.steps,
                                    "max_map_drop": 1.0, "project": str(self.out), "name": name, **goal,
                                    **keys})  # fmt: skip

    def attention(self) -> Path:
        """`prune` with `attention=prune` (the heads of attention blocks cut too)."""
        return self.prune("attention", attention="prune")

    def latency(self) -> Path:
        """`prune` with `latency_aware=True` (one ranking of importance per millisecond across layers)."""
        return self.prune("latency", latency_aware=True)

    def distill(self) -> Path:
        """`prune` with the input checkpoint as teacher."""
        return self.prune("distill", distill=True)

    def slim(self) -> Path:
        """Sparsity training from the input for half the epochs, then `yolo slim` and fine-tuning for the rest."""
        from ultralytics_prune import YOLOPrune
        from ultralytics_prune.model import run_recipe

        sparse_epochs = self.args.epochs // 2
        model = YOLOPrune(self.args.model)
        model.train(**self.common, epochs=sparse_epochs, sr=self.args.sr, optimizer="SGD", project=str(self.out),
                    name="slim_sparsity")  # fmt: skip
        return run_recipe("slim", {**self.common, "model": str(model.trainer.last), "rate": self.args.rate,
                                   "epochs": self.args.epochs - sparse_epochs, "max_map_drop": 1.0,
                                   "project": str(self.out), "name": "slim"})  # fmt: skip

    def scratch(self) -> Path:
        """The pruned architecture with fresh weights, trained from scratch for all the epochs."""
        import torch.nn as nn

        from ultralytics_prune import YOLOPrune
        from ultralytics_prune.checkpoint import load_model, save_checkpoint

        if "prune" not in self.checkpoints:
            raise RuntimeError("needs the prune row's architecture: run the prune row first")
        model = load_model(self.checkpoints["prune"])
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()
        head = model.model[-1]
        if hasattr(head, "bias_init"):
            head.bias_init()
        start = save_checkpoint(model, self.out / "scratch_init.pt", train_args={"data": self.args.data})
        trained = YOLOPrune(str(start))
        trained.train(**self.common, epochs=self.args.epochs, project=str(self.out), name="scratch")
        return Path(trained.trainer.best)

    def run(self) -> list[dict]:
        """Run and measure every requested row; a failing row keeps its error and the others go on."""
        from ultralytics.utils import LOGGER, TQDM

        names = [r.strip() for r in self.args.rows.split(",") if r.strip()]
        unknown = set(names) - set(ROWS)
        if unknown:
            raise SystemExit(f"unknown rows {sorted(unknown)}: choose from {', '.join(ROWS)}")
        rows = []
        for name in TQDM(names, desc="benchmark rows"):
            t = time.perf_counter()
            row = {"row": name, "train_epochs": 0 if name == "base" else self.args.epochs, "error": ""}
            try:
                self.checkpoints[name] = getattr(self, name)()
                row.update(self.measure(self.checkpoints[name]))
            except Exception as e:  # a failing row is reported, not fatal
                LOGGER.warning(f"benchmark: row '{name}' failed: {type(e).__name__}: {e}")
                row["error"] = f"{type(e).__name__}: {e}"
            row["wall_s"] = time.perf_counter() - t
            rows.append(row)
        self.add_latency(rows)
        return rows

    def measure(self, checkpoint: Path) -> dict:
        """MACs, parameters and validation mAP of a checkpoint, and its ONNX export (latency is measured later)."""
        from ultralytics import YOLO

        from ultralytics_prune.checkpoint import load_model
        from ultralytics_prune.report import count_macs_params, export_onnx

        macs, params = count_macs_params(load_model(checkpoint), self.args.imgsz)
        metrics = YOLO(str(checkpoint)).val(**self.common, project=str(self.out / "val"), name=checkpoint.stem,
                                           verbose=False)  # fmt: skip
        copy = self.out / "onnx" / f"{len(list((self.out / 'onnx').glob('*.pt')))}_{checkpoint.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(checkpoint.read_bytes())  # export next to a copy, never beside the user's file
        own = getattr(metrics, "seg", None) or getattr(metrics, "pose", None) or metrics.box  # mask, pose, else box
        return {"macs_G": macs / 1e9, "params_M": params / 1e6, "mAP50": float(metrics.box.map50),
                "mAP50-95": float(metrics.box.map), "task_mAP50-95": float(own.map),
                "onnx": str(export_onnx(copy, self.args.imgsz))}  # fmt: skip

    def add_latency(self, rows: list[dict]) -> None:
        """onnxruntime CPU latency of every measured row, interleaved, and the speed-up over base."""
        from ultralytics_prune.latency import onnx_latencies

        measured = [r for r in rows if r.get("onnx")]
        for r, ms in zip(measured, onnx_latencies([r["onnx"] for r in measured], self.args.imgsz, rounds=100)):
            r["onnx_ms"] = ms
        base = next((r for r in measured if r["row"] == "base"), None)
        for r in measured:
            r["speedup"] = base["onnx_ms"] / r["onnx_ms"] if base else float("nan")


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the numbers rounded for reading)."""

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write its files and print the table; exit status 1 when any row failed."""
    args = parse_args(argv)
    from ultralytics_prune.plots import plot_benchmark
    from ultralytics_prune.report import write_csv

    bench = Benchmark(args)
    bench.out.mkdir(parents=True, exist_ok=True)
    rows = bench.run()
    table = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    write_csv(table, bench.out / "benchmark.csv")
    (bench.out / "benchmark.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    md = markdown_table(table)
    (bench.out / "benchmark.md").write_text(md)
    plot_benchmark(rows, bench.out / "benchmark.png")
    print(md)
    base = next((r for r in rows if r["row"] == "base" and not r["error"]), None)
    for r in rows:
        if base and r is not base and not r["error"]:
            fewer = base["macs_G"] / r["macs_G"]
            print(f"{r['row']}: mAP50-95 {base['mAP50-95']:.3f} -> {r['mAP50-95']:.3f} with x{fewer:.2f} fewer MACs, "
                  f"x{r['speedup']:.2f} faster (onnxruntime CPU, {args.imgsz} px)")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
