"""How a fine-tune goes on from the training that made its model, instead of starting a new one.

A converged model sits where its own training left it: its optimizer, a learning rate decayed to `lr0 * lrf`, and,
with Ultralytics' defaults, its last epochs without mosaic. A fine-tune that starts a fresh schedule at full
learning rate, with another optimizer or under mosaic again, first throws much of that away and then learns it
again (docs/results.md, "Fine-tuning from a converged parent"). So every fine-tune of the pruning loop (the sparse
epochs, each step's fine-tune, the `continue` control) and sparsity training from a trained checkpoint go on from the
parent's training as its checkpoint records it (`train_args`, which Ultralytics saves with `optimizer=auto` already
resolved):

- the parent's optimizer, from `CONTINUE_LR_RISE` times the learning rate it ended at down to that rate, without
  warmup (the warmup is for a model whose weights are not trained yet);
- mosaic off for the whole fine-tune where the parent's last epoch ran without it (`close_mosaic`).

The keys the user sets win. A checkpoint that records no training (`train_args` missing) gets `FALLBACK_KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ultralytics_prune.files import UNREADABLE

CONTINUE_LR_RISE = 10.0  # a fine-tune starts at this multiple of the learning rate the parent ended at (its lr0 at most)
AUTO_ITERATIONS = 10_000  # Ultralytics' `optimizer=auto` picks SGD-type optimizers above this many optimizer steps
FALLBACK_KEYS: dict[str, Any] = {"optimizer": "SGD", "lr0": 0.001, "lrf": 0.1, "warmup_epochs": 0.0,
                                 "warmup_bias_lr": 0.0}  # fmt: skip
ADAPTIVE = ("Adam", "Adamax", "AdamW", "NAdam", "RAdam")  # optimizers that rescale every gradient


@dataclass(frozen=True)
class ParentTraining:
    """What a checkpoint records of the training that made it.

    Attributes:
        optimizer (str): The optimizer that ran (`auto` resolved as Ultralytics resolves it).
        lr0 (float): Its initial learning rate.
        lrf (float): Its final learning rate as a share of `lr0`.
        closed_mosaic (bool): Its last epoch ran without mosaic.
    """

    optimizer: str
    lr0: float
    lrf: float
    closed_mosaic: bool

    @property
    def final_lr(self) -> float:
        """The learning rate the parent's training ended at."""
        return self.lr0 * self.lrf


def read_parent_training(file: str | Path) -> ParentTraining | None:
    """The training recorded in the checkpoint `file`, or None when it records none (or is not a readable file)."""
    path = Path(file) if isinstance(file, (str, Path)) else None
    if path is None or path.suffix != ".pt" or not path.is_file():
        return None
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt = torch_safe_load(str(path))[0]
    except UNREADABLE:
        return None  # the loop's own load says what is wrong with the file
    args = ckpt.get("train_args") or {}
    if not args.get("optimizer") or not args.get("lr0"):
        return None
    optimizer, lr0 = str(args["optimizer"]), float(args["lr0"])
    if optimizer.lower() == "auto":  # saved by an Ultralytics release that did not record what `auto` chose
        model = ckpt.get("ema") or ckpt.get("model")
        nc = int(getattr(model, "nc", None) or (getattr(model, "yaml", None) or {}).get("nc", 10))
        large = int(ckpt.get("updates") or 0) > AUTO_ITERATIONS  # its optimizer steps, as Ultralytics counts them
        optimizer, lr0 = ("SGD", 0.01) if large else ("AdamW", round(0.002 * 5 / (4 + nc), 6))
    mosaic_closed = int(args.get("close_mosaic") or 0) > 0 or float(args.get("mosaic", 1.0)) == 0.0
    return ParentTraining(optimizer, lr0, float(args.get("lrf", 0.01)), mosaic_closed)


def continuation_keys(parent: ParentTraining | None) -> dict[str, Any]:
    """The Ultralytics keys of a fine-tune that goes on from `parent` (see module docstring)."""
    if parent is None:
        return dict(FALLBACK_KEYS)
    lr0 = min(parent.lr0, parent.final_lr * CONTINUE_LR_RISE)
    keys = {"optimizer": parent.optimizer, "lr0": lr0, "lrf": min(1.0, parent.final_lr / lr0), "warmup_epochs": 0.0,
            "warmup_bias_lr": 0.0}  # fmt: skip
    if parent.closed_mosaic:
        keys["mosaic"] = 0.0
    return keys


def continue_from(model: Any, overrides: dict) -> dict:
    """`overrides` over the keys that continue the training of the checkpoint `model` (the user's keys win);
    `overrides` as they are without a model (a resumed run reads its own keys back)."""
    if not model:
        return dict(overrides)
    return {**continuation_keys(read_parent_training(model)), **overrides}


def sparsity_continuation(parent: ParentTraining | None) -> dict[str, Any]:
    """The keys of sparsity training (`sr > 0`) that goes on from `parent`: as `continuation_keys`, but an adaptive
    optimizer (Adam and kin rescale the L1 term into a fixed step) gives way to SGD at `FALLBACK_KEYS`' rates."""
    keys = continuation_keys(parent)
    if keys["optimizer"] in ADAPTIVE:
        keys.update({k: FALLBACK_KEYS[k] for k in ("optimizer", "lr0", "lrf")})
    return keys
