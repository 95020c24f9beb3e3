"""DepGraph iterative pruning (`yolo prune`, torch-pruning): what each step of the loop removes, and by which measure.

What is important (an importance criterion, `build_importance`) is kept apart from how it is removed (torch-pruning's
`BasePruner` on the model's dependency graph, `DepGraphPruner.remove`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset

from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.engine import PruneRun
from ultralytics_prune.graph import example_input, held_layers, hold_modules, trace_settings, tracing
from ultralytics_prune.report import count_macs_params


def build_importance(name: str) -> tp.importance.Importance:
    """The torch-pruning importance criterion called `name` (see `importance` in cfg/default.yaml)."""
    imp = tp.importance
    return {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn": lambda: imp.BNScaleImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "random": lambda: imp.RandomImportance(),
    }[name]()


def step_ratios(rate: float, steps: int) -> list[float]:
    """Cumulative channel ratio after each step (linear schedule, as torch-pruning's), step 0 = 0."""
    return [rate * i / steps for i in range(steps + 1)]


def loss_gradients(model: nn.Module, args, batches: int = 4) -> None:
    """Fill the parameter gradients of `model` with the detection loss of a few training batches (for Taylor).

    The loss needs `model.args`; it is set for the call and put back, so nothing of it reaches a checkpoint.
    """
    data = check_det_dataset(args.data)
    dataset = build_yolo_dataset(args, data["train"], args.batch, data, mode="val", stride=32)
    loader = build_dataloader(dataset, args.batch, 0, shuffle=False)
    saved = {k: model.__dict__[k] for k in ("args", "criterion") if k in model.__dict__}
    model.args, model.criterion = args, None
    try:
        model.train()
        model.zero_grad()
        for i, batch in enumerate(loader):
            batch["img"] = batch["img"].float() / 255
            loss, _ = model.loss(batch)
            loss.sum().backward()
            if i + 1 >= batches:
                break
    finally:
        for k in ("args", "criterion"):
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)


class DepGraphPruner(PruneRun):
    """`yolo prune`: torch-pruning's DepGraph structured pruning, iterative with fine-tuning.

    Each step removes channels so that the cumulative share removed follows a linear schedule up to `rate`, or, with
    `target_macs` / `speedup`, so that MACs fall geometrically to that goal; the loop around it validates, fine-tunes
    for `epochs` and stops when mAP50-95 falls more than `max_map_drop` below the start.
    """

    mode = "prune"
    result_name = "pruned"

    @property
    def n_steps(self) -> int:
        """`iterative_steps`."""
        return self.args.iterative_steps

    def remove(self, step: int) -> dict:
        """Remove channels up to this step's cumulative ratio, or down to this step's MACs goal."""
        goal = self.macs_goal()
        if goal is None:
            ratios = step_ratios(self.args.rate, self.n_steps)
            self.prune_to(ratios[step - 1], ratios[step])
            return {"ratio": ratios[step]}
        base = self.rows[0]["macs_G"] * 1e9
        self.prune_to_macs(base * (goal / base) ** (step / self.n_steps))
        return {"ratio": 0.0}

    def make_pruner(self, ratio: float, iterative_steps: int = 1) -> tp.pruner.BasePruner:
        """A torch-pruning pruner for the current model, removing `ratio` of its current channels."""
        model = self.model
        held = held_layers(model, hold_modules(model, self.args.hold))
        with tracing(model):
            return tp.pruner.BasePruner(
                model,
                example_input(model, max(64, self.args.imgsz)),
                importance=build_importance(self.args.importance),
                global_pruning=self.args.global_pruning,
                pruning_ratio=ratio,
                iterative_steps=iterative_steps,
                ignored_layers=held,
                round_to=self.args.round_to if self.args.round_to > 1 else None,
                root_module_types=[nn.Conv2d],
                **trace_settings(),
            )

    def step_pruner(self, pruner: tp.pruner.BasePruner) -> None:
        """One `pruner.step()`, with the loss gradients it needs first when the criterion is Taylor."""
        if self.args.importance == "taylor":
            loss_gradients(self.model, ultralytics_args(self.args))
        pruner.step()
        self.model.zero_grad(set_to_none=True)

    def prune_to(self, ratio_now: float, ratio_next: float) -> None:
        """Remove channels so the cumulative share removed goes from `ratio_now` to `ratio_next`."""
        self.step_pruner(self.make_pruner(1 - (1 - ratio_next) / (1 - ratio_now)))

    def prune_to_macs(self, target_macs: float) -> None:
        """Remove channels in small increments until the model's MACs are at most `target_macs`."""
        pruner = self.make_pruner(0.9, iterative_steps=45)
        for _ in range(45):
            if count_macs_params(self.model, self.args.imgsz)[0] <= target_macs:
                return
            self.step_pruner(pruner)

    def macs_goal(self) -> float | None:
        """Final MACs goal from `target_macs` (GMACs) or `speedup`, or None when `rate` rules."""
        base = self.rows[0]["macs_G"] * 1e9
        if self.args.target_macs:
            return min(self.args.target_macs * 1e9, base)
        if self.args.speedup:
            return base / self.args.speedup
        return None
