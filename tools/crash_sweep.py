"""Kill a small `yolo prune` and `yolo slim` run with SIGKILL at many moments, resume each, compare the final models.

    python tools/crash_sweep.py --out runs/crash_sweep [--points 10] [--modes prune,speedup,slim]

The modes run what a user runs, with every key at its default but the few that make a CPU run repeatable and small
(`KEYS`): `prune` (`yolo prune`: the sensitivity scan, the least-squares rebuild, BatchNorm re-estimation, two steps),
`speedup` (the same to `speedup=2`, the MACs goal) and `slim` (`yolo slim`). Each mode runs once uninterrupted while the run folder is watched: its duration and the moment each file first
appears. Then, for each of `--points` moments spread evenly over that duration and for the appearance of every file
that marks the run's progress (its own files and every checkpoint), a fresh run is killed there (SIGKILL), resumed with `resume=<folder>` (or started again when it was
killed before its folder held `args.yaml`; nothing is resumed for a run killed after it finished), and its final model is compared with the uninterrupted one, tensor by
tensor with `torch.equal`. The runs are deterministic on the CPU (`deterministic=True`, `workers=0`, `nbs=batch`), so
every resumed model must be equal bit for bit. Prints a table, writes `crash_sweep.json` and `crash_sweep.md` in
`--out`, and exits with status 1 when any model differs or any resume failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

YOLO = [sys.executable, "-c", "from ultralytics_prune.cli import entrypoint; entrypoint()"]
# one optimizer step per batch (nbs=batch), so every epoch ends on a step; deterministic CPU, no loader workers
KEYS = "imgsz=64 batch=8 nbs=8 workers=0 deterministic=True seed=0 epochs=2 plots=False exist_ok=True"
MODES = {"prune": ("prune", []), "speedup": ("prune", ["speedup=2"]), "slim": ("slim", [])}  # name: (yolo mode, keys)
RESULT = {"prune": "pruned.pt", "slim": "slimmed.pt"}
POLL = 0.005  # seconds between looks at the run folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the sweep's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/crash_sweep", help="output folder (data, runs, table)")
    p.add_argument("--points", type=int, default=10, help="kill moments spread evenly over each run")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--timeout", type=float, default=600, help="seconds any one run may take")
    return p.parse_args(argv)


def files_of(run: Path) -> set[str]:
    """The files of a run folder that mark its progress: its own files and every checkpoint (not temp files, not the
    logs and plots of Ultralytics' fine-tunes), relative to the folder."""
    return {p.relative_to(run).as_posix() for p in run.rglob("*")
            if p.is_file() and not p.name.startswith(".") and (p.parent == run or p.suffix == ".pt")}  # fmt: skip


def watch(command: list[str], run: Path, timeout: float) -> tuple[float, dict[str, float]]:
    """Run `command` to its end; return its duration and the moment (s) each file of `run` first appeared."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    while proc.poll() is None:
        now = time.monotonic() - start
        for f in files_of(run) if run.exists() else ():
            seen.setdefault(f, now)
        if now > timeout:
            proc.kill()
            raise RuntimeError(f"{' '.join(command)} took more than {timeout} s")
        time.sleep(POLL)
    if proc.returncode:
        raise RuntimeError(f"the uninterrupted run failed:\n{proc.stderr.read()[-3000:]}")
    return time.monotonic() - start, seen


def kill(command: list[str], run: Path, at: float | None, marker: str | None, timeout: float) -> bool:
    """Start `command` and SIGKILL it at `at` seconds or as soon as `marker` exists; True when it was still running."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and time.monotonic() - start < timeout:
        if (at is not None and time.monotonic() - start >= at) or (marker and (run / marker).exists()):
            break
        time.sleep(POLL)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def is_finished(run: Path, result_name: str) -> bool:
    """True when the run saved its result and checked its export (`run_folder.is_finished`)."""
    from ultralytics_prune.run_folder import is_finished as finished

    return (run / "args.yaml").exists() and finished(run, result_name)


def final_weights(run: Path, mode: str) -> dict:
    """Every tensor of the run's final model."""
    import torch

    return torch.load(run / "weights" / RESULT[mode], weights_only=False)["model"].state_dict()


def same(a: dict, b: dict) -> bool:
    """True when two state dicts hold the same tensors bit for bit."""
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sweep_mode(name: str, base: list[str], runs: Path, points: int, timeout: float) -> list[dict]:
    """Every kill point of one mode of `MODES`: the uninterrupted run, then kill, resume and compare at each point."""
    mode, keys = MODES[name]
    base = [*base, *keys]
    whole = runs / f"{name}-whole"
    shutil.rmtree(whole, ignore_errors=True)
    duration, appeared = watch([*YOLO, mode, *base, f"name={whole.name}"], whole, timeout)
    expected = final_weights(whole, mode)
    moments = [(f"{duration * (i + 1) / (points + 1):.1f}s", duration * (i + 1) / (points + 1), None)
               for i in range(points)]  # fmt: skip
    moments += [(f"at {f}", None, f) for f, _ in sorted(appeared.items(), key=lambda kv: kv[1])]
    rows = []
    for i, (label, at, marker) in enumerate(moments):
        run = runs / f"{name}-{i}"
        shutil.rmtree(run, ignore_errors=True)
        command = [*YOLO, mode, *base, f"name={run.name}"]
        t0 = time.monotonic()
        killed = kill(command, run, at, marker, timeout)
        if is_finished(run, RESULT[mode][:-3]):  # killed after its last file: nothing to resume
            resumed = subprocess.CompletedProcess(command, 0, "", "")
        else:
            again = [*YOLO, mode, f"resume={run}"] if (run / "args.yaml").exists() else command
            resumed = subprocess.run(again, capture_output=True, text=True, timeout=timeout)
        ok = resumed.returncode == 0 and (run / "weights" / RESULT[mode]).exists()
        equal = ok and same(final_weights(run, mode), expected)
        rows.append({"mode": name, "kill": label, "killed": killed, "resumed": ok, "equal": equal,
                     "seconds": round(time.monotonic() - t0, 1),
                     "error": "" if ok else resumed.stderr.strip().splitlines()[-1:]})  # fmt: skip
        print(f"{name:7s} {label:45s} killed={killed!s:5s} resumed={ok!s:5s} equal={equal}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; 0 when every resumed model equals its uninterrupted run."""
    args = parse_args(argv)
    if unknown := sorted(set(args.modes.split(",")) - set(MODES)):
        print(f"--modes: unknown {unknown}, choose from {','.join(MODES)}", file=sys.stderr)
        return 2
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from tools.make_dataset import make_synthetic_dataset
    from ultralytics_prune.checkpoint import save_checkpoint

    out = Path(args.out).resolve()
    data = make_synthetic_dataset(out / "data", n_train=16, n_val=8, imgsz=64, nc=3)
    torch.manual_seed(0)
    model = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), out / "base.pt")
    base = [f"model={model}", f"data={data}", f"project={out / 'runs'}", *KEYS.split()]
    rows = [r for mode in args.modes.split(",") for r in sweep_mode(mode, base, out / "runs", args.points,
                                                                   args.timeout)]  # fmt: skip
    lines = ["| mode | killed at | killed | resumed | equal | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['kill']} | {r['killed']} | {r['resumed']} | {r['equal']} | {r['seconds']} |"
              for r in rows]  # fmt: skip
    (out / "crash_sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "crash_sweep.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    bad = [r for r in rows if not r["equal"]]
    killed = sum(r["killed"] for r in rows)
    print(f"{killed} of {len(rows)} runs were killed before they ended; table in {out / 'crash_sweep.md'}")
    print(f"sweep: {len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
