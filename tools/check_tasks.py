"""Every task end to end on CPU: sparsity training, `yolo prune`, `yolo slim`, reload and validation in Ultralytics.

    python tools/check_tasks.py --out runs/check_tasks

For each model (built from Ultralytics' yaml) on a synthetic set of its task: `yolo train sr=0.001 epochs=1`, then
`yolo prune rate=0.5 iterative_steps=1 epochs=1` and `yolo slim rate=0.3 epochs=0` of the trained checkpoint; each
result is loaded with plain `ultralytics.YOLO`, its task checked, and validated. Prints a table (MACs before -> after,
the ONNX check, the task after reload) and writes check_tasks.json; exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.make_dataset import make_synthetic_dataset  # noqa: E402

MODELS = {"yolov8n-seg": "segment", "yolov8n-pose": "pose", "yolov8n-obb": "obb", "yolo11n-seg": "segment",
          "yolo26n-pose": "pose"}  # fmt: skip
RESULTS = {"prune": "pruned.pt", "slim": "slimmed.pt"}


def check(name: str, task: str, out: Path, imgsz: int) -> list[dict]:
    """Train, prune and slim one model; one row per result."""
    from ultralytics import YOLO

    from ultralytics_prune.checkpoint import load_model
    from ultralytics_prune.cli import entrypoint
    from ultralytics_prune.measure.report import count_macs_params

    data = make_synthetic_dataset(out / f"data-{task}", n_train=16, n_val=8, imgsz=imgsz, task=task)
    common = f"data={data} imgsz={imgsz} batch=8 workers=0 exist_ok=True plots=False"
    entrypoint(f"yolo train model={name}.yaml epochs=1 sr=0.001 {common} project={out / 'train'} name={name}")
    trained = out / "train" / name / "weights" / "last.pt"
    base = count_macs_params(load_model(trained), imgsz)[0]
    entrypoint(f"yolo prune model={trained} rate=0.5 iterative_steps=1 epochs=1 {common} project={out / 'prune'} "
               f"name={name}")  # fmt: skip
    entrypoint(f"yolo slim model={trained} rate=0.3 epochs=0 {common} project={out / 'slim'} name={name}")
    rows = []
    for mode, file in RESULTS.items():
        result = out / mode / name / "weights" / file
        reloaded = YOLO(str(result))
        reloaded.val(data=str(data), imgsz=imgsz, batch=8, workers=0, plots=False, verbose=False)
        onnx = json.loads((out / mode / name / "onnx_check.json").read_text())
        macs = count_macs_params(load_model(result), imgsz)[0]
        rows.append({"model": name, "mode": mode, "macs_factor": macs / base, "onnx_match": onnx["match"],
                     "task": reloaded.task, "ok": reloaded.task == task and onnx["match"] and
                     (mode != "prune" or macs < 0.6 * base)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every model; print the table, write check_tasks.json; 1 when a check failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/check_tasks", help="output folder")
    p.add_argument("--imgsz", type=int, default=96, help="image size")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    rows = [row for name, task in MODELS.items() for row in check(name, task, out, args.imgsz)]
    (out / "check_tasks.json").write_text(json.dumps(rows, indent=2))
    print("| model | mode | MACs after / before | ONNX matches | task after reload | ok |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['macs_factor']:.2f} | {r['onnx_match']} | {r['task']} | {r['ok']} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
