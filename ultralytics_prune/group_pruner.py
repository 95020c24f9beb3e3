"""How channels are removed: score every prunable group of coupled channels, cut each down to a width.

What is important is a torch-pruning importance criterion (`build_importance`); how many channels each group keeps is
the caller's (see `widths`); `GroupPruner` removes the lowest-scored ones on the model's dependency graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from ultralytics_prune.graph import build_graph, prunable_groups


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
