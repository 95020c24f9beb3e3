"""A run is never lost: one process per run folder, Ctrl-C says how to go on, a full disk stops cleanly, an unreadable
args.yaml is named, and a continued fine-tune says when it cannot match a run never stopped."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.errors import DiskFull, UserError
from ultralytics_prune.model import run_recipe
from ultralytics_prune.recipes.finetune_state import inexact_continuation
from ultralytics_prune.run_folder import LOCK_FILE, RunLock, find_resume_dir

YOLO = [sys.executable, "-c", "from ultralytics_prune.cli import entrypoint; entrypoint()"]
FAST = {"imgsz": 64, "batch": 8, "nbs": 8, "workers": 0, "plots": False, "exist_ok": True, "device": "cpu",
        "recalibrate": 8, "rate": 0.4, "sensitivity": False, "reconstruct": 0}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), tmp_path_factory.mktemp("m") / "m.pt")


def test_one_process_per_run_folder(tmp_path):
    first = RunLock(tmp_path, "resuming it")
    with pytest.raises(UserError, match=r"in use by process \d+: let it finish \(or stop it\) before resuming it"):
        RunLock(tmp_path, "resuming it")
    first.release()
    RunLock(tmp_path).release()


def test_a_killed_process_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"from ultralytics_prune.run_folder import RunLock; import time; "
                               f"lock = RunLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
        RunLock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_FILE).exists(), "the file stays; the lock was the process's"
    RunLock(tmp_path).release()


def test_a_second_resume_of_a_living_run_is_refused(checkpoint, synthetic_data, tmp_path):
    run = tmp_path / "r"
    run_recipe("prune", {**FAST, "model": str(checkpoint), "data": str(synthetic_data), "project": str(tmp_path),
                         "name": "r", "iterative_steps": 1, "epochs": 0, "onnx": False})  # fmt: skip
    (run / "weights" / "pruned.pt").unlink()  # unfinished again
    lock = RunLock(run)  # another process resuming it
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(UserError, match="in use by process"):
        run_recipe("prune", {"resume": str(run)})
    lock.release()
    assert sorted(p.name for p in run.rglob("*")) == before


def test_ctrl_c_names_the_resume_command_and_the_run_resumes(checkpoint, synthetic_data, tmp_path):
    run = tmp_path / "c"
    keys = [f"model={checkpoint}", f"data={synthetic_data}", f"project={tmp_path}", "name=c", "iterative_steps=1",
            "epochs=3", "onnx=False", *(f"{k}={v}" for k, v in FAST.items())]  # fmt: skip
    proc = subprocess.Popen([*YOLO, "prune", *keys], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = run / "step1" / "weights" / "resume_state.pt"
    deadline = time.monotonic() + 240
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and f"interrupted; 'yolo prune resume={run}' goes on from here" in out, out[-3000:]
    resumed = subprocess.run([*YOLO, "prune", f"resume={run}"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing the interrupted fine-tune" in resumed.stdout + resumed.stderr
    assert (run / "weights" / "pruned.pt").is_file()


def test_a_full_disk_stops_in_one_line_and_loses_nothing(checkpoint, synthetic_data, tmp_path, monkeypatch):
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        if Path(f).name == ".step.pt.tmp":
            Path(f).write_bytes(b"half a checkpoint")  # what a full disk leaves: a partial temp file
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    keys = {**FAST, "model": str(checkpoint), "data": str(synthetic_data), "project": str(tmp_path), "name": "d",
            "iterative_steps": 2, "epochs": 0, "onnx": False}  # fmt: skip
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull) as error:
        run_recipe("prune", keys)
    run = tmp_path / "d"
    message = str(error.value)
    assert "\n" not in message and "no space left" in message and f"'yolo prune resume={run}'" in message
    assert (run / "prune_results.csv").read_text().count("\n") == 2, "the baseline row is intact"
    assert not (run / "step1" / "weights" / "step.pt").exists()
    assert not (run / "step1" / "weights" / ".step.pt.tmp").exists(), "the partial temp file is removed"
    monkeypatch.setattr(torch, "save", real_save)
    assert run_recipe("prune", {"resume": str(run)}) == run / "weights" / "pruned.pt"
    assert (run / "prune_results.csv").read_text().count("\n") == 4


def test_an_unreadable_args_yaml_is_named_not_taken_for_finished(tmp_path):
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "pruned.pt").write_bytes(b"")
    (run / "args.yaml").write_text("model: [unclosed\n  :")
    for resume in (True, str(run)):
        with pytest.raises(UserError, match=f"{run / 'args.yaml'} cannot be read"):
            find_resume_dir(resume, tmp_path, "prune", "pruned")


def test_a_continued_fine_tune_says_why_it_is_not_exact():
    def trainer(nbs, batch, batches, workers=0, deterministic=True):
        args = SimpleNamespace(nbs=nbs, workers=workers, deterministic=deterministic)
        return SimpleNamespace(args=args, batch_size=batch, train_loader=range(batches),
                               device=torch.device("cpu"))  # fmt: skip

    assert inexact_continuation(trainer(nbs=8, batch=8, batches=3)) == ""
    assert inexact_continuation(trainer(nbs=64, batch=16, batches=8)) == "", "8 batches = 2 accumulations of 4"
    why = inexact_continuation(trainer(nbs=64, batch=16, batches=6, workers=2, deterministic=False))
    assert "gradient accumulation (6 batches of 16, nbs=64 accumulates 4" in why
    assert "workers=2" in why and "deterministic=False" in why
