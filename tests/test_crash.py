"""`kill -9` anywhere in `yolo prune` or `yolo slim`, then `resume=`: the same final model, bit for bit, as a run
never killed."""

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
# The two moments that need the fine-tune's own state to go on bit for bit; `tools/crash_sweep.py` (run in CI) kills
# at every file a run writes and at moments spread over its whole duration.
KILL_POINTS = {  # name -> (mode, the file whose appearance triggers the kill)
    "prune mid-fine-tune of step 2": ("prune", "step2/weights/resume_state.pt"),  # after its first epoch
    "slim mid-fine-tune": ("slim", "step1/weights/resume_state.pt"),
}
RESULT = {"prune": "pruned.pt", "slim": "slimmed.pt"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A dataset, an untrained checkpoint, and (made when first asked) the final weights of uninterrupted runs."""
    root = tmp_path_factory.mktemp("crash")
    data = make_synthetic_dataset(root / "data", n_train=16, n_val=8, imgsz=64, nc=3)
    torch.manual_seed(0)
    model = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), root / "base.pt")
    return {"root": root, "args": [*f"model={model} data={data} project={root / 'runs'}".split(), *KEYS.split()],
            "references": {}}  # fmt: skip


def command(setup: dict, mode: str, name: str) -> list[str]:
    """The `yolo <mode>` command line of a run called `name`."""
    return [*YOLO, mode, *setup["args"], f"name={name}"]


def reference(setup: dict, mode: str) -> dict[str, torch.Tensor]:
    """The final weights of an uninterrupted run of `mode` (run once)."""
    if mode not in setup["references"]:
        done = subprocess.run(command(setup, mode, f"whole-{mode}"), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        setup["references"][mode] = final_weights(setup["root"] / "runs" / f"whole-{mode}", mode)
    return setup["references"][mode]


def final_weights(run: Path, mode: str) -> dict[str, torch.Tensor]:
    """Every tensor of the run's final model."""
    return torch.load(run / "weights" / RESULT[mode], weights_only=False)["model"].state_dict()


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
    mode, marker = KILL_POINTS[point]
    expected = reference(setup, mode)
    name = "-".join(point.split()[:2])
    run = setup["root"] / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    assert kill_when(command(setup, mode, name), run / marker), "finished before the kill"
    assert not (run / "onnx_check.json").exists()
    resumed = subprocess.run([*YOLO, mode, f"resume={run}"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    if "mid-fine-tune" in point:
        assert "continuing the interrupted fine-tune" in log and "at epoch 2" in log, "the step must go on, not redo"
    got = final_weights(run, mode)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "the resumed run's model differs"
    assert (run / "onnx_check.json").exists() and not list(run.rglob("resume_state.pt"))
    assert not [p.name for p in run.parent.iterdir() if p.name.startswith(name) and p.name != name]
