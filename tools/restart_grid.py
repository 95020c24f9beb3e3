"""Where a fine-tune's first-epoch drop comes from: the unpruned parent trained on under several recipes, one at a time.

    python tools/restart_grid.py --model best.pt --data my.yaml --imgsz 128 --epochs 10 --out runs/restart_grid

Each recipe trains the parent (nothing cut) for `--epochs` epochs with Ultralytics' own detection trainer and reads
its results.csv: the mAP50-95 after the first epoch, the lowest and the last, against the parent's own. The recipes
change one thing at a time, read from the parent's `train_args` (its optimizer as Ultralytics resolved `auto`, `lr0`,
`lrf`): the optimizer, the learning rate, warmup and mosaic. Writes restart_grid.csv and restart_grid.json in `--out`
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NO_WARMUP = {"warmup_epochs": 0.0, "warmup_bias_lr": 0.0}


def recipes(optimizer: str, lr0: float, lrf: float, epochs: int) -> dict[str, dict]:
    """The recipes measured, by name: Ultralytics keys for a parent trained with `optimizer` from `lr0` to `lr0*lrf`."""
    closed, final = {"close_mosaic": epochs}, lr0 * lrf
    return {
        "sgd_0.01_mosaic": {"optimizer": "SGD", "lr0": 0.01, **NO_WARMUP, "close_mosaic": 0},
        "sgd_0.01": {"optimizer": "SGD", "lr0": 0.01, **NO_WARMUP, **closed},
        "ultralytics_auto_warmup": {"optimizer": "auto", **closed},
        "parent_lr0": {"optimizer": optimizer, "lr0": lr0, **NO_WARMUP, **closed},
        "sgd_0.001": {"optimizer": "SGD", "lr0": 0.001, "lrf": 0.1, **NO_WARMUP, **closed},
        "parent_10x_final": {"optimizer": optimizer, "lr0": 10 * final, "lrf": 0.1, **NO_WARMUP, **closed},
        "parent_10x_final_mosaic": {"optimizer": optimizer, "lr0": 10 * final, "lrf": 0.1, **NO_WARMUP,
                                    "close_mosaic": 0},  # fmt: skip
        "parent_10x_final_warmup1": {"optimizer": optimizer, "lr0": 10 * final, "lrf": 0.1, "warmup_epochs": 1.0,
                                     "warmup_bias_lr": 0.0, **closed},  # fmt: skip
        "parent_final": {"optimizer": optimizer, "lr0": final, "lrf": 1.0, **NO_WARMUP, **closed},
    }


def main(argv: list[str] | None = None) -> int:
    """Train every recipe, write the table; return a process exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the converged parent checkpoint")
    p.add_argument("--data", required=True, help="dataset yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--recipes", default="", help="comma-separated subset of the recipes (default: all)")
    p.add_argument("--out", default="runs/restart_grid")
    args = p.parse_args(argv)

    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer

    from ultralytics_prune.files import read_csv, write_csv

    train_args = torch.load(args.model, map_location="cpu", weights_only=False).get("train_args") or {}
    table = recipes(str(train_args.get("optimizer", "SGD")), float(train_args.get("lr0", 0.01)),
                    float(train_args.get("lrf", 0.01)), args.epochs)  # fmt: skip
    names = [n.strip() for n in args.recipes.split(",") if n.strip()] or list(table)
    if unknown := sorted(set(names) - set(table)):
        p.error(f"--recipes: unknown {unknown}, choose from {','.join(table)}")
    out = Path(args.out).resolve()
    rows = []
    for name in names:
        keys = dict(model=args.model, data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                    workers=0, seed=0, deterministic=True, plots=False, exist_ok=True, project=str(out), name=name)
        trainer = DetectionTrainer(overrides={**keys, **table[name]})
        trainer.train()
        curve = [float(r["metrics/mAP50-95(B)"]) for r in read_csv(trainer.csv)]
        rows.append({"recipe": name, "first": curve[0], "lowest": min(curve), "last": curve[-1],
                     "keys": " ".join(f"{k}={v}" for k, v in table[name].items())})  # fmt: skip
        (out / "restart_grid.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    write_csv(rows, out / "restart_grid.csv")
    print("| recipe | first epoch | lowest | last |\n|---|---|---|---|")
    print("\n".join(f"| {r['recipe']} | {r['first']:.3f} | {r['lowest']:.3f} | {r['last']:.3f} |" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
