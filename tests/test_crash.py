"""`kill -9` anywhere in `yolo prune`, then `resume=`: the same final model, bit for bit, as a run never killed."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from tools.make_dataset import make_synthetic_dataset
from ultralytics_prune.checkpoint import save_checkpoint

YOLO = [sys.executable, "-c", "from ultralytics_prune.cli import entrypoint; entrypoint()"]
# one optimizer step per batch (nbs=batch), so every epoch ends on a step; deterministic CPU, no loader workers
KEYS = ("imgsz=64 batch=8 nbs=8 workers=0 deterministic=True seed=0 iterative_steps=2 epochs=2 rate=0.4 "
        "recalibrate=16 plots=False exist_ok=True")  # fmt: skip
KILL_POINTS = {
    "mid-fine-tune of step 2": "step2/weights/resume_state.pt",  # written after its first epoch; the second runs
    "between steps": "step1/weights/step.pt",
    "during export": "weights/pruned.pt",  # the export starts right after the final checkpoint is written
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A dataset, an untrained checkpoint, and the final weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("crash")
    data = make_synthetic_dataset(root / "data", n_train=16, n_val=8, imgsz=64, nc=3)
    torch.manual_seed(0)
    model = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), root / "base.pt")
    common = [*f"prune model={model} data={data} project={root / 'runs'}".split(), *KEYS.split()]
    done = subprocess.run([*YOLO, *common, "name=whole"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "common": common, "reference": final_weights(root / "runs" / "whole")}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's final model."""
    return torch.load(run / "weights" / "pruned.pt", weights_only=False)["model"].state_dict()


def kill_when(command: list[str], marker: Path, timeout: float = 300) -> bool:
    """Start `command`, SIGKILL it as soon as `marker` exists; True when it was killed (not already finished)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_then_resume_gives_the_same_model(setup, point):
    name = point.split()[0].replace("-", "")
    run = setup["root"] / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    assert kill_when([*YOLO, *setup["common"], f"name={name}"], run / KILL_POINTS[point]), "finished before the kill"
    assert not (run / "onnx_check.json").exists()
    resumed = subprocess.run([*YOLO, "prune", f"resume={run}"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    if point.startswith("mid"):
        assert "continuing the interrupted fine-tune" in log and "at epoch 2" in log, "the step must go on, not redo"
    got, reference = final_weights(run), setup["reference"]
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in reference), "the resumed run's model differs"
    assert (run / "onnx_check.json").exists() and not list(run.rglob("resume_state.pt"))
    assert not [p.name for p in run.parent.iterdir() if p.name.startswith(name) and p.name != name]
