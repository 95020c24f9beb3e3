"""Reading a user's checkpoint safely and writing ours atomically, in Ultralytics' checkpoint format."""

from __future__ import annotations

import os
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from ultralytics_prune import __version__


def load_detection_model(weights: str | Path) -> nn.Module:
    """Load a trained detection checkpoint as an FP32 model in train-ready form, or raise one readable line.

    Args:
        weights (str | Path): Path to an Ultralytics `.pt` checkpoint (e.g. `best.pt`, `last.pt`, `pruned.pt`).

    Raises:
        FileNotFoundError: The file does not exist (nothing is downloaded).
        ValueError: The file is not a readable Ultralytics detection checkpoint.
    """
    path = Path(weights)
    if path.suffix != ".pt":
        raise ValueError(f"'model={weights}' is not a checkpoint: pass a trained '.pt' file, e.g. 'model=best.pt'")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{weights}' not found: pass the path of a trained '.pt' file")
    try:
        model, _ = load_checkpoint(path)
    except Exception as e:
        reason = " ".join(str(e).replace("ERROR", "").replace("❌️", "").split())
        raise ValueError(f"checkpoint '{weights}' could not be read ({type(e).__name__}: {reason}); is it corrupt?") from e
    if not isinstance(model, DetectionModel) or getattr(model, "task", "detect") != "detect":
        raise ValueError(
            f"checkpoint '{weights}' holds a '{getattr(model, 'task', type(model).__name__)}' model; "
            f"ultralytics-prune prunes detection models (task=detect)"
        )
    model = model.float()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_checkpoint(model: nn.Module, file: str | Path, train_args: dict | None = None, **extra) -> Path:
    """Save `model` in FP32 as an Ultralytics-loadable checkpoint; written to a temp file, then renamed.

    Args:
        model (nn.Module): The model to save; it is copied, not modified.
        file (str | Path): Destination `.pt` path.
        train_args (dict | None): Arguments stored as `train_args` (Ultralytics restores `model.args` from them).
        **extra: More entries for the checkpoint dict (e.g. `prune` metadata).

    Returns:
        (Path): The written file.
    """
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    snapshot = deepcopy(model).float().eval()
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
    tmp = file.with_name(f".{file.name}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, file)
    return file
