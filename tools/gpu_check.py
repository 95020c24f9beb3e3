"""Every GPU path of ultralytics-prune in one command, for a machine with CUDA (about 8 minutes on one GPU).

    python tools/gpu_check.py --out runs/gpu_check

Steps, each a subprocess with its own time limit, so one failure is recorded and the others still run:
  prune      `yolo prune device=0` end to end on a small synthetic set: one step, one fine-tune epoch, ONNX check
  latency    `tools/bench_latency.py` of the unpruned and the pruned model at 640 px on PyTorch CUDA, onnxruntime CUDA
             and TensorRT FP16 (onnxruntime's TensorRT provider): medians, speed-up, realization per backend
  goal-cuda  a latency goal measured on the GPU: `speedup=1.5 speedup_by=latency latency_backend=cuda`
  goal-trt   the same on `latency_backend=tensorrt`
  ddp        Ultralytics' DDP launcher with `device=0,1` (only where two GPUs or more are visible; one GPU is said so)
Writes gpu_check.json and gpu_check.md (one row per step: ok, seconds, what it measured or the last error lines) in
`--out`. Without CUDA it says so in one line and exits with status 2; otherwise the status is 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

YOLO = [sys.executable, "-c", "from ultralytics_prune.cli import entrypoint; entrypoint()"]
NO_CUDA = "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the check's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check", help="output folder")
    p.add_argument("--imgsz", type=int, default=640, help="image size of the latency rows")
    return p.parse_args(argv)


def step(name: str, command: list[str], timeout: float, read=None) -> dict:
    """Run one step; its row: ok, seconds, and `read()` (what it measured) or the last lines of its output."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        ok, tail = done.returncode == 0, (done.stdout + done.stderr).strip().splitlines()[-5:]
    except subprocess.TimeoutExpired:
        ok, tail = False, [f"timed out after {timeout:.0f} s"]
    row = {"step": name, "ok": ok, "seconds": round(time.monotonic() - start, 1)}
    try:
        row["result"] = read() if ok and read else " | ".join(tail)
    except Exception as e:  # the step ran but left no readable result
        row.update(ok=False, result=f"{type(e).__name__}: {e}")
    print(f"gpu_check: {name:10s} {'ok' if row['ok'] else 'FAILED'} {row['seconds']:7.1f}s {row['result']}", flush=True)
    return row


def last_row(run: Path) -> dict:
    """The last row of a prune run's CSV (MACs, mAP, speed-ups)."""
    from ultralytics_prune.files import read_csv

    return read_csv(run / "prune_results.csv")[-1]


def main(argv: list[str] | None = None) -> int:
    """Run every step; 0 when all passed, 1 when one failed, 2 without CUDA."""
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 2
    from ultralytics.nn.tasks import DetectionModel

    from tools.make_dataset import make_synthetic_dataset
    from ultralytics_prune.checkpoint import save_checkpoint

    out = Path(args.out).resolve()
    data = make_synthetic_dataset(out / "data", n_train=64, n_val=16, imgsz=320, nc=3)
    base = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), out / "yolov8n.pt")
    runs = out / "runs"
    common = [f"model={base}", f"data={data}", f"project={runs}", "imgsz=320", "batch=16", "workers=2",
              "plots=False", "exist_ok=True", "device=0"]  # fmt: skip
    goal = [*common, "speedup=1.5", "speedup_by=latency", "iterative_steps=1", "epochs=0", "onnx=False"]
    pruned = runs / "prune" / "weights" / "pruned.pt"
    rows = [
        step("prune", [*YOLO, "prune", *common, "name=prune", "rate=0.5", "iterative_steps=1", "epochs=1"], 240,
             lambda: {k: last_row(runs / "prune")[k] for k in ("macs_G", "mAP50-95_post", "speedup")}),
        step("latency", [sys.executable, "tools/bench_latency.py", str(base), str(pruned), "--imgsz", str(args.imgsz),
                         "--backends", "cuda,tensorrt", "--repeat", "2", "--out", str(out / "latency")], 240,
             lambda: [{k: r[k] for k in ("backend", "model", "median_ms", "speedup", "realization")}
                      for r in json.loads((out / "latency" / "latency.json").read_text())["rows"]]),
        step("goal-cuda", [*YOLO, "prune", *goal, "name=goal-cuda", "latency_backend=cuda"], 120,
             lambda: {k: last_row(runs / "goal-cuda").get(k) for k in ("cuda_ms", "cuda_speedup")}),
        step("goal-trt", [*YOLO, "prune", *goal, "name=goal-trt", "latency_backend=tensorrt"], 240,
             lambda: {k: last_row(runs / "goal-trt").get(k) for k in ("tensorrt_ms", "tensorrt_speedup")}),
    ]  # fmt: skip
    if torch.cuda.device_count() > 1:
        ddp = [*common[:-1], "device=0,1", "name=ddp", "rate=0.5", "iterative_steps=1", "epochs=1", "onnx=False"]
        rows.append(step("ddp", [*YOLO, "prune", *ddp], 240, lambda: last_row(runs / "ddp")["mAP50-95_post"]))
    else:
        rows.append({"step": "ddp", "ok": True, "seconds": 0.0,
                     "result": "not run: Ultralytics starts DDP for two devices or more; 1 GPU here"})  # fmt: skip
    device = torch.cuda.get_device_name(0)
    lines = [f"GPU check on {device} (torch {torch.__version__})", "", "| step | ok | s | result |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['ok']} | {r['seconds']} | {r['result']} |" for r in rows]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2), encoding="utf-8")
    failed = sum(not r["ok"] for r in rows)
    print(f"gpu_check: {len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
