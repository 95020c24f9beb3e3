"""End-to-end demo on CPU, offline: make a synthetic dataset, train YOLOv8n, prune it to half its MACs, compare.

    python tools/demo.py                 # about 13 minutes on 2 CPU cores
    python tools/demo.py --out runs/demo --epochs 40 --speedup 2 --finetune 10

Everything lands in `--out`: the dataset, the training run of the base model, and the benchmark (base, `continue` (the
base fine-tuned the same epochs with nothing cut: what the pruned model is read against) and pruned side by side on
the same data: MACs, parameters, mAP, vs_continue, measured onnxruntime CPU latency; benchmark.md/.csv/.json/.png),
with the pruning run itself (prune_results.csv and .png, weights/pruned.pt, weights/pruned.onnx) in benchmark/prune.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchmark import main as benchmark  # noqa: E402
from tools.make_dataset import make_synthetic_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for the dataset and all runs")
    parser.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model yaml to train from scratch")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs of the base model")
    parser.add_argument("--speedup", type=float, default=2.0, help="prune until the MACs fell by this factor")
    parser.add_argument("--finetune", type=int, default=10, help="fine-tune epochs after pruning")
    parser.add_argument("--imgsz", type=int, default=128, help="image size")
    args = parser.parse_args(argv)

    from ultralytics.utils import LOGGER

    from ultralytics_prune import YOLOPrune

    out = Path(args.out).resolve()
    data = make_synthetic_dataset(out / "dataset", n_train=256, n_val=64, imgsz=args.imgsz, nc=3, seed=0)
    base = YOLOPrune(args.model)
    base.train(data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=16, workers=2, plots=False, seed=0,
               project=str(out), name="base", exist_ok=True)  # fmt: skip
    best = Path(base.trainer.best)
    code = benchmark(["--data", str(data), "--model", str(best), "--speedup", str(args.speedup), "--speedup-by", "macs",
                      "--epochs", str(args.finetune), "--steps", "1", "--imgsz", str(args.imgsz),
                      "--rows", "base,continue,prune", "--out", str(out / "benchmark")])  # fmt: skip
    LOGGER.info(f"Demo done: {out / 'benchmark' / 'benchmark.md'}, pruned model {out / 'benchmark/prune/weights'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
