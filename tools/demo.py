"""End-to-end demo on CPU, offline: make a synthetic dataset, train YOLOv8n with sparsity, prune it, fine-tune.

    python tools/demo.py                 # about 2-4 minutes on 2 CPU cores
    python tools/demo.py --out runs/demo --epochs 8 --rate 0.5

Everything lands in `--out`: the dataset, the sparsity-training run (results.csv with gamma columns, gamma.png), the
pruning run (prune_results.csv, prune_results.png, weights/pruned.pt, weights/pruned.onnx).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.make_dataset import make_synthetic_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for the dataset and all runs")
    parser.add_argument("--model", default="yolov8n.yaml", help="Ultralytics model yaml to train from scratch")
    parser.add_argument("--epochs", type=int, default=6, help="sparsity-training epochs")
    parser.add_argument("--rate", type=float, default=0.5, help="target channel-pruning ratio")
    parser.add_argument("--steps", type=int, default=2, help="iterative pruning steps")
    parser.add_argument("--imgsz", type=int, default=96, help="image size")
    args = parser.parse_args(argv)

    from ultralytics.utils import LOGGER

    from ultralytics_prune import YOLOPrune

    out = Path(args.out).resolve()
    data = make_synthetic_dataset(out / "dataset", n_train=96, n_val=24, imgsz=args.imgsz, nc=3, seed=0)
    common = dict(data=str(data), imgsz=args.imgsz, batch=16, workers=0, exist_ok=True)

    model = YOLOPrune(args.model)
    model.train(**common, epochs=args.epochs, sr=1e-3, optimizer="SGD", lr0=0.02, project=str(out), name="sparse")
    best = out / "sparse" / "weights" / "best.pt"

    pruned = YOLOPrune(str(best)).prune(
        **common, rate=args.rate, iterative_steps=args.steps, epochs=2, project=str(out / "prune"), name="exp"
    )
    LOGGER.info(f"\nDemo done. Pruned model: {pruned.ckpt_path}\nReport: {out / 'prune' / 'exp' / 'prune_results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
