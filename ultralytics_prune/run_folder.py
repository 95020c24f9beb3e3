"""A run's folder: claimed once, held by one process at a time, found again by `resume=`, and known to be finished.

The hold is the operating system's advisory lock on `<run>/.lock` (`fcntl.flock`), not the file's existence: a run
killed with SIGKILL leaves no lock behind (the kernel releases it with the process), so `resume=` can take the folder
at once, while a second process started on a living run is refused in one line. Where `fcntl` does not exist
(Windows) folders are not locked.
"""

from __future__ import annotations

import os
from pathlib import Path

from ultralytics.utils import YAML
from ultralytics.utils.files import increment_path

from ultralytics_prune.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"
ARGS_FILE = "args.yaml"


def new_run_dir(path: Path, exist_ok: bool = False) -> Path:
    """Create and return `path`, or with `exist_ok=False` the next free `path2`, `path3`, ...

    The folder is claimed by `mkdir` itself, so two runs started at once with the same name get different folders.
    """
    while True:
        candidate = increment_path(path, exist_ok=exist_ok)
        try:
            candidate.mkdir(parents=True, exist_ok=exist_ok)
            return candidate
        except FileExistsError:  # another run took it between the look and the mkdir
            continue


class RunLock:
    """Holds the lock of a run folder until `release` (or until the process ends, however it ends).

    Args:
        folder (Path): The run folder.
        command (str): What the refused process was asked to do, for its error line.

    Raises:
        UserError: Another living process holds the folder.
    """

    def __init__(self, folder: Path, command: str = "this run"):
        """Take the lock of `folder` or refuse in one line."""
        self.handle = None
        if fcntl is None:
            return
        handle = open(Path(folder) / LOCK_FILE, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{folder} is in use by {owner}: let it finish (or stop it) before {command}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        """Let the folder go (closing the file releases the lock)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def run_args(folder: Path) -> dict:
    """The arguments a run folder was started with.

    Raises:
        UserError: Its `args.yaml` is missing or cannot be read.
    """
    file = Path(folder) / ARGS_FILE
    try:
        args = YAML.load(file)
    except Exception as e:  # a half-written, truncated or edited file
        raise UserError(f"{file} cannot be read ({type(e).__name__}): restore it, or start a new run") from e
    if not isinstance(args, dict):
        raise UserError(f"{file} holds no arguments: restore it, or start a new run")
    return args


def is_finished(folder: Path, result_name: str) -> bool:
    """True when the run in `folder` saved `weights/<result_name>.pt` and, if it exports, checked its ONNX file.

    Raises:
        UserError: The run saved its result but its `args.yaml` cannot be read (so whether it exports is unknown).
    """
    if not (Path(folder) / "weights" / f"{result_name}.pt").exists():
        return False
    return not run_args(folder).get("onnx", True) or (Path(folder) / "onnx_check.json").exists()


def find_resume_dir(resume, project: Path, mode: str, result_name: str) -> Path:
    """The run folder to resume: `resume=path` (the folder or a file in it) or the latest unfinished run in `project`.

    Raises:
        UserError: The path is not a run folder of `mode`, the run is finished, or there is nothing to resume.
    """
    if isinstance(resume, (str, Path)) and str(resume) not in {"True", "true"}:
        path = Path(resume)
        path = path if path.is_dir() else path.parent
        if not (path / ARGS_FILE).exists():
            raise UserError(f"'resume={resume}' is not a {mode} run folder (no {ARGS_FILE} in {path})")
        if is_finished(path, result_name):
            raise UserError(f"'resume={resume}': that {mode} run is finished ({result_name}.pt exists)")
        return path
    runs = sorted((p.parent for p in project.glob(f"*/{ARGS_FILE}")), key=lambda p: p.stat().st_mtime)
    unfinished = [p for p in runs if not is_finished(p, result_name)]
    if not unfinished:
        raise UserError(f"no unfinished {mode} run in {project} to resume: pass 'resume=<run folder>'")
    return unfinished[-1]
