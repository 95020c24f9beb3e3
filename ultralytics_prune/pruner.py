"""DepGraph iterative pruning (`yolo prune`, torch-pruning): what each step of the loop removes, and by which measure.

What is important (a torch-pruning importance criterion, `build_importance`) is kept apart from how many channels
each layer keeps (`widths`) and from how they are removed (`GroupPruner`, on the model's dependency graph).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from ultralytics_prune.calibrate import loss_gradients
from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.engine import PruneRun
from ultralytics_prune.graph import build_graph, held_layers, hold_modules, prunable_groups
from ultralytics_prune.report import count_macs_params
from ultralytics_prune.widths import global_widths, kept_width


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


class GroupPruner:
    """Removes, in every prunable group of coupled channels, the least important channels down to a given width.

    The group's root is a convolution; its name keys the widths. Groups that the criterion cannot score (e.g. `bn`
    where no BatchNorm is coupled) keep all their channels.

    Args:
        model (nn.Module): The model to prune in place (block twins swapped in).
        importance (tp.importance.Importance): The criterion that scores each group's channels.
        held (list[nn.Module]): Layers whose output channels never change.
        imgsz (int): Side of the example image used for tracing.
    """

    def __init__(self, model: nn.Module, importance: tp.importance.Importance, held: list[nn.Module], imgsz: int):
        """Trace the model and score every prunable group (before anything is removed)."""
        self.graph = build_graph(model, imgsz)
        names = {m: n for n, m in model.named_modules()}
        self.groups, self.names, self.scores = [], [], []
        for group in prunable_groups(self.graph, held):
            with torch.no_grad():
                score = importance(group)
            if score is None:
                continue
            self.groups.append(group)
            self.names.append(names[group[0].dep.target.module])
            self.scores.append(score.detach().float().cpu())

    def widths(self) -> list[int]:
        """The current width of every scored group."""
        return [len(s) for s in self.scores]

    def prune(self, widths: list[int]) -> None:
        """Remove the lowest-scored channels of each group down to `widths` (same order as `names`)."""
        for group, score, width in zip(self.groups, self.scores, widths):
            n = len(score) - width
            if n > 0:
                idxs = torch.argsort(score, stable=True)[:n].tolist()
                root = group[0].dep.target.module
                self.graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs).prune()


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
            return self.prune_to(step_ratios(self.args.rate, self.n_steps)[step])
        base = self.rows[0]["macs_G"] * 1e9
        return self.prune_to_macs(base * (goal / base) ** (step / self.n_steps))

    @property
    def original_widths(self) -> dict[str, int]:
        """Output width of every convolution of the input model (block twins swapped in), by module name."""
        if not hasattr(self, "_original_widths"):
            model = self.model if not self.rows[1:] else self.input_model()
            self._original_widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        return self._original_widths

    def prune_to(self, ratio: float) -> dict:
        """Remove channels so that every prunable layer keeps its share `1 - ratio` of its original width.

        With `global_pruning` one ranking over all layers decides how many each keeps (same total share).
        Returns the row entries: `ratio` asked and `removed`, the share of prunable channels really removed.
        """
        if self.args.importance == "taylor":
            loss_gradients(self.model, ultralytics_args(self.args))
        held = held_layers(self.model, hold_modules(self.model, self.args.hold))
        pruner = GroupPruner(self.model, build_importance(self.args.importance), held, max(64, self.args.imgsz))
        originals = [self.original_widths[name] for name in pruner.names]
        if self.args.global_pruning:
            widths = global_widths(pruner.scores, originals, ratio, self.args.round_to)
        else:
            widths = [kept_width(o, ratio, self.args.round_to, c) for o, c in zip(originals, pruner.widths())]
        pruner.prune(widths)
        self.model.zero_grad(set_to_none=True)
        removed = 1 - sum(widths) / max(1, sum(originals))
        return {"ratio": ratio, "removed": removed}

    def prune_to_macs(self, target_macs: float) -> dict:
        """Raise the cumulative ratio in small increments until the model's MACs are at most `target_macs`."""
        done = {"ratio": float(self.rows[-1]["ratio"]), "removed": float(self.rows[-1].get("removed", 0.0))}
        while count_macs_params(self.model, self.args.imgsz)[0] > target_macs and done["ratio"] < 0.95:
            done = self.prune_to(min(0.95, done["ratio"] + 0.025))
        return done

    def macs_goal(self) -> float | None:
        """Final MACs goal from `target_macs` (GMACs) or `speedup`, or None when `rate` rules."""
        base = self.rows[0]["macs_G"] * 1e9
        if self.args.target_macs:
            return min(self.args.target_macs * 1e9, base)
        if self.args.speedup:
            return base / self.args.speedup
        return None
