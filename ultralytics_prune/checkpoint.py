"""Checkpoint state: reading a user's checkpoint safely, writing ours atomically, and what a saved model says of itself.

What we save holds only Ultralytics' own classes (`to_plain`): the block twins, the box decoder twin and the attention
twin of earlier releases are swapped back for the Ultralytics modules they stand for, so `pip install ultralytics`
alone loads the file. Loading gives plain modules; the pruning loop swaps its twins in again.

A pruned model cannot be rebuilt from its yaml. `mark_pruned` records that in the model (its `yaml["pruned"]`, which
survives pickling and Ultralytics' own checkpoint code); `is_pruned` asks it; `make_trainable` undoes what Ultralytics'
checkpoint format does to parameters (half precision, gradients off).
"""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.tasks import load_checkpoint, temporary_modules
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_prune import __version__
from ultralytics_prune.channels.attention import restore_attention
from ultralytics_prune.errors import UserError
from ultralytics_prune.files import UNREADABLE, atomic_path
from ultralytics_prune.patches.blocks import TWINS
from ultralytics_prune.patches.dfl import restore_dfl
from ultralytics_prune.patches.plain import restore_blocks
from ultralytics_prune.tasks import task_of

PRUNED_KEY = "pruned"  # the entry of model.yaml that marks a pruned model


def student_of(model: nn.Module) -> nn.Module:
    """The model being trained: `model` unwrapped from DDP and from Ultralytics' `DistillationModel` (whose
    parameters and EMA carry a `student_model.` prefix, and whose checkpoints hold only the student)."""
    model = unwrap_model(model)
    return getattr(model, "student_model", model)


def make_trainable(model: nn.Module) -> nn.Module:
    """Turn gradients on for every parameter of `model` (Ultralytics checkpoints store them off); returns `model`."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def mark_pruned(model: nn.Module, method: str, **info) -> None:
    """Record in `model.yaml` that the model was pruned by `method`, so that nothing rebuilds it from the yaml."""
    model.yaml = {**(getattr(model, "yaml", None) or {}), PRUNED_KEY: {"method": method, **info}}


def pruned_info(model: nn.Module) -> dict:
    """What `mark_pruned` recorded (`method`, ...), or an empty dict for a model that was never pruned."""
    return dict((getattr(model, "yaml", None) or {}).get(PRUNED_KEY) or {})


def is_pruned(model: nn.Module) -> bool:
    """True when `model` cannot be rebuilt from its yaml: it was pruned or slimmed, or holds block twins."""
    twins = tuple(TWINS.values())
    return bool(pruned_info(model)) or any(isinstance(m, twins) for m in model.modules())


def foreign_modules(model: nn.Module) -> list[str]:
    """Import paths of the classes in `model` that plain Ultralytics cannot unpickle (ours), sorted, each once."""
    return sorted({f"{type(m).__module__}.{type(m).__name__}" for m in model.modules()
                   if type(m).__module__.split(".")[0] == __name__.split(".")[0]})  # fmt: skip


def to_plain(model: nn.Module) -> nn.Module:
    """Swap, in place, every twin of ours in `model` back for the Ultralytics module it stands for; returns `model`.

    Raises:
        ValueError: A module of ours cannot be expressed by Ultralytics' class (e.g. block halves of unequal width,
            or attention value channels pruned by an earlier release); nothing then should be saved as plain.
    """
    restore_blocks(model)
    restore_dfl(model)
    restore_attention(model)
    if left := foreign_modules(model):
        raise ValueError(f"cannot save as plain Ultralytics modules: {', '.join(left)} remain")
    return model


MOVED_MODULES = {"ultralytics_prune.attention": "ultralytics_prune.channels.attention"}  # pickled by earlier releases


def read_checkpoint(file: str | Path) -> tuple[nn.Module, dict]:
    """Ultralytics' `load_checkpoint` (model, checkpoint dict), with the classes earlier releases pickled under module
    paths that have moved since (`MOVED_MODULES`) found where they live now."""
    with temporary_modules(MOVED_MODULES):
        return load_checkpoint(file)


def is_pruned_file(file: str | Path) -> bool:
    """True when `file` is a checkpoint whose model is pruned (see `is_pruned`); False for anything else, unreadable
    files included (Ultralytics then says what is wrong with them)."""
    path = Path(file)
    if path.suffix != ".pt" or not path.is_file():
        return False
    try:
        return is_pruned(read_checkpoint(path)[0])
    except UNREADABLE:
        return False


def first_non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer of `model` holding NaN or Inf, or None when all are finite."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def load_model(weights: str | Path) -> nn.Module:
    """Load a trained YOLO checkpoint (detect, segment, pose, OBB) as an FP32, trainable model, or raise one line.

    Args:
        weights (str | Path): Path to an Ultralytics `.pt` checkpoint (e.g. `best.pt`, `last.pt`, `pruned.pt`).

    Raises:
        UserError: The path is not a `.pt` file, does not exist (nothing is downloaded), cannot be read, holds a
            model of another family or task (see `tasks.task_of`), or holds NaN or Inf weights.
    """
    path = Path(weights)
    if path.suffix != ".pt":
        raise UserError(f"'model={weights}' is not a checkpoint: pass a trained '.pt' file, e.g. 'model=best.pt'")
    if not path.is_file():
        raise UserError(f"checkpoint '{weights}' not found: pass the path of a trained '.pt' file")
    try:
        model, _ = read_checkpoint(path)
    except Exception as e:  # any failure to unpickle is the file's fault, not ours
        reason = " ".join(str(e).replace("ERROR", "").replace("❌️", "").split())
        why = f"{type(e).__name__}: {reason}"
        raise UserError(f"checkpoint '{weights}' could not be read ({why}); is it corrupt?") from e
    task_of(model, f"checkpoint '{weights}'")
    bad = first_non_finite(model)
    if bad:
        raise UserError(f"checkpoint '{weights}' holds non-finite weights (NaN or Inf in '{bad}'); use an earlier one")
    return make_trainable(model.float())


def save_checkpoint(model: nn.Module, file: str | Path, train_args: dict | None = None, **extra) -> Path:
    """Save `model` in FP32 as an Ultralytics-loadable checkpoint; written to a temp file, then renamed.

    The copy that is saved holds only Ultralytics' classes (`to_plain`), no loss criterion and no `args` (Ultralytics
    restores `model.args` from `train_args` when it loads the file). A model that plain Ultralytics cannot express
    (one pruned by an earlier release) is saved with our classes, with a warning.

    Args:
        model (nn.Module): The model to save; it is copied, not modified.
        file (str | Path): Destination `.pt` path.
        train_args (dict | None): Arguments stored as `train_args`.
        **extra: More entries for the checkpoint dict (e.g. `prune_results`).

    Returns:
        (Path): The written file.
    """
    bad = first_non_finite(model)
    if bad:  # never write a model that cannot be used; the callers keep the last good one
        raise RuntimeError(f"refusing to save {file}: '{bad}' holds NaN or Inf")
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model).float().eval()
    try:
        to_plain(snapshot)
    except ValueError as e:
        snapshot = deepcopy(model).float().eval()
        LOGGER.warning(f"{file}: {e}; it loads only where ultralytics-prune is installed")
    snapshot.__dict__.pop("args", None)
    if hasattr(snapshot, "criterion"):
        snapshot.criterion = None
    for p in snapshot.parameters():
        p.requires_grad_(False)
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "ultralytics_prune": __version__,
        "model": snapshot,
        "ema": None,
        "train_args": dict(train_args or {}),
        **extra,
    }
    return save_atomic(ckpt, file)


def save_atomic(obj, file: str | Path) -> Path:
    """`torch.save` to a temp file renamed over `file`: the file is always whole (or the old one); a failed write
    (a full disk) leaves no temp file behind."""
    with atomic_path(file) as tmp:
        torch.save(obj, tmp)
    return Path(file)
