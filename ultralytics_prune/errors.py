"""The exceptions the CLI prints as one line (a user's mistake, a full disk, an export that does not match); every
other exception is a bug and keeps its traceback."""

from __future__ import annotations

import errno


class UserError(ValueError):
    """A mistake in what the user asked for (a key, a value, a path, a checkpoint) that the user can fix.

    The message is one line that names the problem and the fix. The `yolo` command prints it and exits with status 2;
    the Python API raises it. It subclasses ValueError so that code catching ValueError keeps working.
    """


class ExportMismatch(RuntimeError):
    """The exported ONNX model does not compute what the PyTorch model computes.

    The run's PyTorch checkpoint is saved; the `yolo` command prints the numbers as one line and exits with status 1.
    """


class DiskFull(UserError):
    """A write failed for lack of space; every file written before it is intact (all writes are temp + rename)."""


def is_disk_full(e: BaseException) -> bool:
    """True when `e` (or what caused it) is a write that failed for lack of space.

    torch.save does not raise OSError: its zip writer reports a failed write as a RuntimeError ("file write failed").
    """
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and "file write failed" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def refuse_several_devices(trainer, key: str, fix: str) -> None:
    """Refuse a fine-tune addition of ours on several devices: Ultralytics' DDP workers start fresh processes that
    get none of the callbacks added to `trainer`.

    Raises:
        UserError: `trainer` trains on more than one device.
    """
    if trainer.world_size > 1:
        raise UserError(f"'{key}' trains on one device (Ultralytics' DDP workers do not get it): use a single "
                        f"'device', or {fix}")  # fmt: skip
