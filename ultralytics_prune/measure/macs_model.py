"""MACs as a function of the widths of a model's channel groups, from one trace, and the widths that meet a MACs goal.

A MACs goal (`target_macs`, `speedup`) used to be met by raising the cut in 2.5 % increments, each a new trace of the
dependency graph and a new count of the whole model: on yolov8x at 640 px most of a step's time. Here the traced graph
says, for every group, which input and output channels of every convolution its channels are; the MACs of any widths
then follow from arithmetic (`MacsModel`), and `widths_for_macs` searches the width policy's own ratio for the goal.

With coarse rounding (`round_to=16` on a 64-channel layer is 64, 48, 32 or 16) many layers change width at the same
ratio, and the first ratio below the goal could cut far past it (yolo11n, `speedup=2`, measured x2.75): layers then
move to their narrower width one at a time, least important channels first, until the goal is met.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ultralytics_prune.channels.widths import tie_halves

SEARCH_STEPS = 40  # bisection steps on the ratio (2**-40: far finer than one channel of any layer)
COUNTED = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)  # the layers whose MACs follow the widths


def channels(layer: nn.Module) -> tuple[int, int]:
    """(input channels per group, output channels) of a counted layer; 1 input for a layer whose cost is linear in
    its width (depthwise convolution, BatchNorm)."""
    if isinstance(layer, nn.BatchNorm2d):
        return 1, layer.num_features
    if layer.groups > 1 and layer.groups == layer.in_channels:
        return 1, layer.out_channels
    return layer.in_channels // layer.groups, layer.out_channels


def unit_macs(layer: nn.Module) -> int:
    """MACs per output pixel per (input x output channel) of a counted layer (a kernel tap, 2 for BatchNorm)."""
    return 2 if isinstance(layer, nn.BatchNorm2d) else layer.kernel_size[0] * layer.kernel_size[1]


class MacsModel:
    """The MACs of a model at any widths of the groups of a `GroupPruner`, without pruning it.

    The model's MACs as counted once (`total`) change through its convolutions and BatchNorms, whose input and output
    channels each group's width sets: MACs = total + sum over them of (their MACs at the new channel counts minus now).
    What else follows the width (pooling, upsampling, attention products) is left out: the prediction errs high by
    0.01-0.07 % of the cut model's MACs on YOLOv8n/11n/26n and their seg models (tests/test_macs_model.py).

    Args:
        model (nn.Module): The model the pruner was built on (not changed).
        pruner: The `group_pruner.GroupPruner` of `model` (its graph, groups, twin halves and rounding).
        total (float): The model's MACs now, as `report.count_macs_params` counts them.
        example (torch.Tensor): An input image batch of one, to read each convolution's output size.
    """

    def __init__(self, model: nn.Module, pruner, total: float, example: torch.Tensor):
        """Record each layer's channels and output size, and each group's share of its channels."""
        self.pruner, self.total = pruner, total
        layers = [m for m in model.modules() if isinstance(m, COUNTED)]
        pixels = {}

        def record(layer: nn.Module, inputs, output: torch.Tensor) -> None:
            pixels[layer] = output.shape[-1] * output.shape[-2]

        hooks = [m.register_forward_hook(record) for m in layers]
        training = model.training
        try:
            with torch.no_grad():
                model.eval()(example)
        finally:
            model.train(training)
            for h in hooks:
                h.remove()
        self.layers = [m for m in layers if m in pixels]
        index = {m: i for i, m in enumerate(self.layers)}
        # per layer: channels now and MACs per (output channel x input channel per group), counted as
        # torch-pruning's op counter does (`report.count_macs_params`): a convolution k*k*in*out/groups per output
        # pixel, a BatchNorm 2 per element; a depthwise convolution's and a BatchNorm's cost is linear in the width
        self.outs = torch.tensor([float(channels(m)[1]) for m in self.layers], dtype=torch.float64)
        self.ins = torch.tensor([float(channels(m)[0]) for m in self.layers], dtype=torch.float64)
        self.fixed_in = torch.tensor([channels(m)[0] == 1 for m in self.layers])
        self.unit = torch.tensor([unit_macs(m) * pixels[m] for m in self.layers], dtype=torch.float64)
        # per group: output / input channels of each layer that one root channel of the group is
        n = len(pruner.groups)
        self.out_share = torch.zeros(n, len(self.layers), dtype=torch.float64)
        self.in_share = torch.zeros(n, len(self.layers), dtype=torch.float64)
        for g, (group, score) in enumerate(zip(pruner.groups, pruner.scores)):
            root = group[0].dep.target.module
            whole = pruner.graph.get_pruning_group(root, tp.prune_conv_out_channels, list(range(len(score))))
            for item in whole.items:
                layer = item.dep.target.module
                if layer not in index:
                    continue
                out = pruner.graph.is_out_channel_pruning_fn(item.dep.handler) or isinstance(layer, nn.BatchNorm2d)
                (self.out_share if out else self.in_share)[g, index[layer]] += len(item.idxs) / len(score)
        self.now = self.layer_macs(torch.zeros(n, dtype=torch.float64))

    def layer_macs(self, removed: torch.Tensor) -> float:
        """The counted layers' MACs when group g loses `removed[g]` root channels."""
        outs = self.outs - removed @ self.out_share
        ins = torch.where(self.fixed_in, self.ins, self.ins - removed @ self.in_share)
        return float((outs * ins * self.unit).sum())

    def __call__(self, widths: Sequence[int]) -> float:
        """The model's MACs with each group at `widths` (same order as the pruner's groups), halves tied as
        `GroupPruner.prune` ties them."""
        current = self.pruner.widths()
        tied = tie_halves(list(widths), current, self.pruner.halves, self.pruner.round_to)
        removed = torch.tensor([c - w for c, w in zip(current, tied)], dtype=torch.float64)
        return self.total + self.layer_macs(removed) - self.now


def widths_for_macs(
    widths_at: Callable[[float], list[int]],
    macs: Callable[[Sequence[int]], float],
    target: float,
    low: float,
    high: float = 0.95,
    cost: Callable[[int, int, int], float] | None = None,
) -> tuple[list[int], float]:
    """The widest widths of a policy that bring `macs` to at most `target`, and the ratio that gives them.

    `widths_at(ratio)` is the width policy (uniform, sensitivity, global ranking...), narrower as the ratio rises. The
    smallest ratio in [`low`, `high`] that meets the goal is bisected; the groups that narrow at it then move one at a
    time, in the order of `cost(group, wide, narrow)` (lowest first: e.g. the importance of the channels the move
    removes), and stop as soon as the goal is met. When even `high` does not meet it, its widths are returned.
    """
    if macs(widths_at(low)) <= target:
        return widths_at(low), low
    if macs(widths_at(high)) > target:
        return widths_at(high), high
    for _ in range(SEARCH_STEPS):
        mid = (low + high) / 2
        low, high = (low, mid) if macs(widths_at(mid)) <= target else (mid, high)
    wide, narrow = widths_at(low), widths_at(high)
    moves = [g for g, (a, b) in enumerate(zip(wide, narrow)) if a != b]
    if cost is not None:
        moves.sort(key=lambda g: cost(g, wide[g], narrow[g]))
    widths = list(wide)
    for g in moves:
        widths[g] = narrow[g]
        if macs(widths) <= target:
            break
    return widths, high
