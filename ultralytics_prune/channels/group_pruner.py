"""How channels are removed: score every prunable group of coupled channels, cut each down to a width; the masks of
the parameter slices a cut would remove (`channel_masks`).

What is important is a torch-pruning importance criterion (`build_importance`); how many channels each group keeps is
the caller's (see `widths`); `GroupPruner` removes the lowest-scored ones on the model's dependency graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

from ultralytics_prune.channels.graph import build_graph, is_out_channels, prunable_groups, twin_halves
from ultralytics_prune.channels.reconstruct import ChannelLedger
from ultralytics_prune.channels.widths import tie_halves


def build_importance(name: str) -> tp.importance.Importance:
    """The torch-pruning importance criterion called `name` (see `importance` in cfg/default.yaml)."""
    imp = tp.importance
    return {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn": lambda: imp.BNScaleImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "hessian": lambda: imp.GroupHessianImportance(),  # reads E[g^2] from .grad: see calibrate.squared_gradients
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
        round_to (int): Where the two halves of a block twin are tied (see `prune`), their width is a multiple of this.
        ledger (ChannelLedger, optional): Told of every layer slice before it is removed (see `reconstruct`).
    """

    def __init__(
        self,
        model: nn.Module,
        importance: tp.importance.Importance,
        held: list[nn.Module],
        imgsz: int,
        round_to: int = 1,
        ledger: ChannelLedger | None = None,
    ):
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
        self.halves = twin_halves(model, self.graph, self.groups)
        self.round_to, self.ledger = round_to, ledger

    def widths(self) -> list[int]:
        """The current width of every scored group."""
        return [len(s) for s in self.scores]

    def prune(self, widths: list[int]) -> list[int]:
        """Remove the lowest-scored channels of each group down to `widths` (same order as `names`).

        Both halves of a block twin keep the same width, the mean of the two asked (see `widths.tie_halves`), so
        the saved model is Ultralytics' own block. Returns the widths kept.
        """
        cuts = self.choose(widths)
        self.remove(cuts)
        return [len(score) - len(idxs) for score, idxs in zip(self.scores, cuts)]

    def choose(self, widths: list[int]) -> list[list[int]]:
        """Which channels `prune(widths)` removes, without removing them: the lowest-scored root channel indices of
        every group (same order as `names`; empty where a group keeps all), halves of a twin tied as in `prune`."""
        widths = tie_halves(widths, self.widths(), self.halves, self.round_to)
        return [torch.argsort(score, stable=True)[: max(0, len(score) - w)].tolist()
                for score, w in zip(self.scores, widths)]  # fmt: skip

    def remove(self, cuts: list[list[int]]) -> None:
        """Remove the root channels `cuts` of every group (from `choose`, on the model as it was scored)."""
        if self.ledger is not None and any(cuts):
            self.ledger.watch(self.graph.model)
        for group, idxs in zip(self.groups, cuts):
            if idxs:
                cut = self.graph.get_pruning_group(group[0].dep.target.module, tp.prune_conv_out_channels, idxs)
                if self.ledger is not None:
                    for item in cut.items:
                        self.ledger.record(item.dep.target.module, is_out_channels(self.graph, item), item.idxs)
                cut.prune()

    def touched(self, cuts: list[list[int]]) -> Iterator[tuple[nn.Module, bool, list[int]]]:
        """Every layer slice that removing `cuts` takes away: (layer, True when the indices are its output channels
        and False for input channels, the indices in that layer). Nothing is removed."""
        for group, idxs in zip(self.groups, cuts):
            if idxs:
                cut = self.graph.get_pruning_group(group[0].dep.target.module, tp.prune_conv_out_channels, idxs)
                for item in cut.items:
                    yield item.dep.target.module, is_out_channels(self.graph, item), list(item.idxs)


def channel_masks(model: nn.Module, touched: Iterable[tuple[nn.Module, bool, list[int]]]) -> dict[str, torch.Tensor]:
    """Masks (1 where a cut removes, else 0) of the parameters of `model` that `GroupPruner.touched` lists.

    Output channels are rows of a convolution's weight and bias and entries of a BatchNorm's weight and bias; input
    channels are columns of a (non-grouped) convolution's weight. A depthwise convolution's input channels are its
    output channels, which the group also lists; other layers (element-wise ops, concat) hold no parameters.
    """
    params = dict(model.named_parameters())
    names = {m: n for n, m in model.named_modules()}
    masks: dict[str, torch.Tensor] = {}
    for layer, produces, idxs in touched:
        if isinstance(layer, nn.BatchNorm2d) or isinstance(layer, nn.Conv2d) and produces:
            targets = [("weight", 0), ("bias", 0)]
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            targets = [("weight", 1)]
        else:
            continue
        for attr, dim in targets:
            if getattr(layer, attr, None) is None:
                continue
            name = f"{names[layer]}.{attr}"
            mask = masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.float32))
            mask.index_fill_(dim, torch.tensor(idxs, device=mask.device), 1.0)
    return masks
