"""Sparse training before a cut (`sparse_epochs`, `sparse_reg`): drive the channels a cut will remove toward zero.

The DepGraph paper (Fang et al. 2023) trains with a group-level penalty before pruning so that whole groups of
coupled channels become unimportant and the cut removes what no longer matters. Here the channels are already
chosen (the step's cut, planned on the dependency graph but not made), so the shrink falls on exactly those
channels, in every layer of their group: the producing convolutions' rows (and biases), the BatchNorm weights and
biases, and the consumers' input columns, while the rest of the model trains on and learns to do without them.

The shrink is decoupled from the optimizer, as AdamW's weight decay is: after each optimizer step every removed slice
is multiplied by a factor below one, so that at full strength an epoch takes `sparse_reg` of what is left of them
away, rising in equal increments over the sparse epochs (`sparse_reg * (epoch + 1) / epochs` in epoch `epoch`). An
L2 penalty added to the gradient instead moves them by the learning rate times its strength: under the fine-tune's
continuation learning rate (`cfg/continuation.py`, a tenth of the parent's) it barely moved them, and Adam rescales
it into a fixed step. A factor shrinks each slice in proportion to itself, so one strength serves layers of any
scale. With BatchNorm weight and bias at zero a channel outputs SiLU(0) = 0: removing it changes nothing.

The shrink is a step post-hook of the optimizer, attached to the fine-tune trainer of the pruning loop by callbacks
(`GroupSparsity.attach`).
"""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn as nn
from ultralytics.utils import LOGGER, RANK, colorstr

from ultralytics_prune.channels.group_pruner import channel_masks
from ultralytics_prune.checkpoint import load_model, save_checkpoint, student_of
from ultralytics_prune.errors import refuse_several_devices

PREFIX = colorstr("sparse: ")
WEAK_LEFT = 0.5  # above this share of the norm left at a cut, the log line suggests a stronger shrink


def masked_norm(model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """The L2 norm of the masked entries of the parameters of `model`, all together."""
    params, total = dict(model.named_parameters()), 0.0
    with torch.no_grad():
        for name, mask in masks.items():
            p = params[name]
            total += float((p.float() * mask.to(p.device)).pow(2).sum())
    return total**0.5


def masks_as_saved(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`masks` of `model`, named and shaped as in the model a fine-tune trainer loads from `save_checkpoint`.

    The checkpoint may hold other modules than the run (e.g. Ultralytics' blocks for our twins), so a copy of `model`
    whose parameters are the masks takes the same way: saved, then loaded.
    """
    probe = deepcopy(model).float()
    with torch.no_grad():
        for name, p in probe.named_parameters():
            p.copy_(masks[name] if name in masks else torch.zeros_like(p))
    with TemporaryDirectory() as folder:
        loaded = load_model(save_checkpoint(probe, Path(folder) / "masks.pt"))
    return {name: p.detach().float().clone() for name, p in loaded.named_parameters() if p.any()}


class GroupSparsity:
    """The growing shrink of the channels a cut will remove (see module docstring).

    Args:
        masks (dict): `{parameter name: mask}`, 1 on the channels to remove (`channel_masks`, `masks_as_saved`).
        reg (float): `sparse_reg`, the share of the removed channels' weights an epoch takes away at full strength.
    """

    def __init__(self, masks: dict[str, torch.Tensor], reg: float):
        """Keep the masks by parameter name, so they apply to any copy of the model (the trainer loads its own)."""
        self.masks = masks
        self.reg = reg
        self.bound: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.keep = 1.0  # the factor each optimizer step leaves of the removed slices in this epoch
        self.start_norm: float | None = None

    def bind(self, model: nn.Module) -> None:
        """Point the shrink at the parameters of `model` (the trainer's copy) with these names."""
        params = dict(model.named_parameters())
        self.bound = [(params[name], mask.to(params[name].device)) for name, mask in self.masks.items()]

    def shrink(self, optimizer=None, args=(), kwargs=None) -> None:
        """Multiply every removed slice by `keep` (an optimizer step post-hook); nothing else."""
        if self.keep >= 1:
            return
        with torch.no_grad():
            for param, mask in self.bound:
                param.mul_(1 - (1 - self.keep) * mask)

    def grow(self, epoch: int, epochs: int, steps: int) -> None:
        """Set this epoch's factor: its `steps` optimizer steps together take `reg * (epoch + 1) / epochs` away."""
        share = min(1.0, self.reg * (epoch + 1) / max(1, epochs))
        self.keep = (1 - share) ** (1 / max(1, steps))

    # the trainer's callbacks --------------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        """Add the penalty to a fine-tune `trainer` (before `train()`), and keep its last epoch as the result.

        The fitness measured before the cut falls as the removed channels shrink, so Ultralytics' `best.pt` would be
        the least sparse epoch; here every epoch is marked best, so `best.pt` is the last.
        On one device only (`errors.refuse_several_devices`).
        """
        refuse_several_devices(trainer, "sparse_epochs", "'sparse_epochs=0'")
        trainer.add_callback("on_train_start", self.on_train_start)
        trainer.add_callback("on_train_epoch_start", lambda t: self.grow(t.epoch, t.epochs, optimizer_steps(t)))
        trainer.add_callback("on_train_epoch_end", self.on_train_epoch_end)

    def on_train_start(self, trainer) -> None:
        """Bind to the trainer's model and hook its optimizer."""
        model = student_of(trainer.model)  # with feature distillation the trainer's model wraps it
        self.bind(model)
        self.start_norm = masked_norm(model, self.masks)
        trainer.optimizer.register_step_post_hook(self.shrink)

    def on_train_epoch_end(self, trainer) -> None:
        """Log the share of the removed channels' norm left (EMA, the weights saved); mark the epoch as best."""
        trainer.best_fitness = None  # Ultralytics' validate() then takes this epoch as best
        if RANK in {-1, 0} and self.start_norm:
            left = masked_norm(student_of(trainer.ema.ema), self.masks) / self.start_norm
            LOGGER.info(f"{PREFIX}epoch {trainer.epoch + 1}/{trainer.epochs}: {left:.1%} of the removed channels' norm "
                        f"left, {1 - self.keep:.3g} taken per optimizer step")  # fmt: skip


def optimizer_steps(trainer) -> int:
    """The optimizer steps of one epoch of `trainer`: Ultralytics steps once every `accumulate` batches."""
    return max(1, math.ceil(len(trainer.train_loader) / max(1, trainer.accumulate)))


class SparseCuts:
    """`sparse_epochs` for `depgraph.DepGraphPruner`: each cut made after training its channels toward zero. Reads the
    run's `args`, `model`, `ledger`, `save_dir`, `prefix` and calls its `cut`, `scored_pruner`, `finetune` and
    `after_cut`."""

    def sparse_cut(self, step: int) -> dict:
        """This step's cut after `sparse_epochs` of training that drives exactly its channels toward zero.

        The cut is first made on a copy (any goal: rate, MACs, latency), which gives the width of every group; the
        channels each group then loses are chosen on the model by the run's criterion, trained toward zero with the
        growing L2 penalty of `group_sparsity` (through the same fine-tune as after a cut, in `step<n>/sparse`), and
        removed. Returns the row entries of `after_cut` with two columns of its own: `sparse_left`, the share of
        their norm left at the cut, and `sparse_shock`, the lowest mAP50-95 of the sparse epochs minus the mAP the
        step started from.
        """
        model, ledger = self.model, self.ledger
        self.model, self.ledger = deepcopy(model), None  # a trial cut: the step's own comes after the sparse epochs
        try:
            done = self.cut(step)
            target = {name: m.out_channels for name, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}
        finally:
            self.model, self.ledger = model, ledger
        pruner = self.scored_pruner()
        cuts = pruner.choose([target[name] for name in pruner.names])
        masks = channel_masks(model, pruner.touched(cuts))
        penalty = GroupSparsity(masks_as_saved(model, masks), self.args.sparse_reg)
        before = masked_norm(model, masks)
        sparse = self.finetune(model, self.save_dir / f"step{step}" / "sparse", self.args.sparse_epochs,
                               setup=penalty.attach)  # fmt: skip
        left = masked_norm(model, masks) / max(before, 1e-12)
        hint = ("; the loss pulled them back: a larger sparse_reg (at most 1) or more sparse_epochs shrinks them"
                if left > WEAK_LEFT else "")  # fmt: skip
        LOGGER.info(f"{self.prefix}step {step}: {left:.1%} of the removed channels' norm left after "
                    f"sparse_epochs={self.args.sparse_epochs} at sparse_reg={self.args.sparse_reg:g}"
                    f"{hint}")  # fmt: skip
        pruner.remove(cuts)
        done = self.after_cut(pruner, [len(s) - len(c) for s, c in zip(pruner.scores, cuts)], done["ratio"])
        start = self.rows[-1][f"{self.task.metric}_post"]
        return {**done, "sparse_left": left, "sparse_shock": min(sparse.curve) - start if sparse.curve else float("nan")}
