"""Network Slimming (`yolo slim`): remove the channels whose BatchNorm scale (gamma) is small, then fine-tune.

Liu et al., "Learning Efficient Convolutional Networks through Network Slimming" (ICCV 2017): after sparsity training
(`yolo train ... sr=1e-4`) many BatchNorm gammas are close to zero; the channels behind them are removed in one shot.
Which channels is `slim_select`'s job; keeping what a removed channel contributed is `fold`'s; `slim_model` puts the
two together on the model's dependency graph, and `NetworkSlimmer` is the recipe the pruning loop runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.utils import LOGGER, colorstr

from ultralytics_prune.channels.fold import fold_constant_inputs, relative_diff
from ultralytics_prune.channels.graph import (
    build_graph,
    conv_bn_pairs,
    held_layers,
    hold_modules,
    is_out_channels,
    prunable_groups,
    raw_head_outputs,
    twin_halves,
)
from ultralytics_prune.channels.slim_select import group_scores, select_tied
from ultralytics_prune.files import write_csv
from ultralytics_prune.measure.gamma import HIST_EDGES, gamma_histogram
from ultralytics_prune.measure.plots import plot_gamma_before_after
from ultralytics_prune.recipes.loop import PruneRun

PREFIX = colorstr("slim: ")


@dataclass
class SlimReport:
    """What `slim_model` did.

    Attributes:
        total (int): Prunable channels: output channels of every slimmable group (root convolutions).
        requested (int): Channels the rate or threshold asked to remove.
        removed (int): Channels removed after `min_channels` and `round_to`.
        threshold (float): Combined |gamma| threshold used (given, or derived from the rate).
        clamped (bool): True when `min_channels` kept channels that the rate or threshold asked to remove.
        folded (int): (consumer conv, removed channel) pairs whose constant output was folded into the consumer.
        unfolded (int): Pairs where the channel was removed without a fold (not constant, or a grouped consumer).
        fold_error (float): max |slimmed - unslimmed with the removed gammas set to 0| / max |reference| over the
            raw head outputs on a random batch: 0 up to rounding when every consumer is 1x1, small otherwise (the
            zero-padded border of kxk consumers).
        output_change (float): The same relative difference between the slimmed and the original model.
        layers (list[dict]): One row per BatchNorm: name, group root, channels before and after, threshold.
        bns (list[nn.BatchNorm2d]): The BatchNorms of the slimmable groups (the same objects, now slimmed).
        hist_before (np.ndarray): `gamma_histogram` of those BatchNorms before slimming.
        hist_after (np.ndarray): The same after slimming.
    """

    total: int = 0
    requested: int = 0
    removed: int = 0
    threshold: float = 0.0
    clamped: bool = False
    folded: int = 0
    unfolded: int = 0
    fold_error: float = 0.0
    output_change: float = 0.0
    layers: list = field(default_factory=list)
    bns: list = field(default_factory=list)
    hist_before: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES) - 1, dtype=int))
    hist_after: np.ndarray = field(default_factory=lambda: np.zeros(len(HIST_EDGES) - 1, dtype=int))

    @property
    def ratio(self) -> float:
        """Actual fraction of the prunable channels removed."""
        return self.removed / self.total if self.total else 0.0


def slimmable_groups(graph: tp.DependencyGraph, held: list[nn.Module], conv_bn: dict) -> tuple[list, list]:
    """The prunable groups that BatchNorm gammas can score, and their scores (see `slim_select.group_scores`)."""
    groups, scores = [], []
    for group in prunable_groups(graph, held):
        score = group_scores(graph, group, conv_bn)
        if score is not None:
            groups.append(group)
            scores.append(score)
    return groups, scores


@torch.no_grad()
def plan_removal(graph: tp.DependencyGraph, groups: list, selections: list[list[int]]) -> tuple[list, dict]:
    """Turn the selected channels into pruning plans and silence them (their gammas set to exactly 0).

    Every plan is computed before anything changes. Returns the (root, indices) pairs to remove and, per consumer
    convolution outside the removed groups' producers, its input channels that will go (to fold).
    """
    plans, wanted = [], {}
    for group, idxs in zip(groups, selections):
        if not idxs:
            continue
        root = group[0].dep.target.module
        plan = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs)
        plans.append((root, idxs))
        produced = {it.dep.target.module for it in plan.items if is_out_channels(graph, it)}
        for item in plan.items:
            module = item.dep.target.module
            if isinstance(module, nn.BatchNorm2d) and is_out_channels(graph, item):
                module.weight[list(item.idxs)] = 0.0
            elif isinstance(module, nn.Conv2d) and not is_out_channels(graph, item) and module not in produced:
                wanted[module] = sorted(set(wanted.get(module, [])) | set(item.idxs))
    return plans, wanted


def slim_model(
    model: nn.Module,
    rate: float = 0.5,
    threshold: float = 0.0,
    min_channels: int = 1,
    round_to: int = 1,
    imgsz: int = 64,
    hold: Iterable[nn.Module] = (),
    fold: bool = True,
    equal_halves: bool = True,
) -> SlimReport:
    """Remove, in place, the channels of `model` with the smallest combined BatchNorm |gamma| (Network Slimming).

    Args:
        model (nn.Module): A detection model with the block twins swapped in (`replace_blocks`), unfused.
        rate (float): Fraction of the prunable channels to remove (one global |gamma| ranking).
        threshold (float): When > 0, remove the channels whose combined |gamma| is below it instead (rate ignored).
        min_channels (int): Channels every group keeps, whatever the rate.
        round_to (int): Keep channel counts rounded up to a multiple of this (1 = no rounding).
        imgsz (int): Side of the example images used for tracing and for reading the dead channels' constants.
        hold (Iterable[nn.Module]): More layers whose output channels stay (head outputs and attention always do).
        fold (bool): Fold the constant output of each removed channel into its consumers (see `fold`).
        equal_halves (bool): Keep both halves of every block twin equally wide (`slim_select.select_tied`), as a
            model saved with Ultralytics' own blocks needs; False selects every layer on its own.

    Returns:
        (SlimReport): Counts, threshold, fold error and per-layer rows. The model is left in eval mode.
    """
    imgsz = max(64, int(imgsz))
    names = {m: n for n, m in model.named_modules()}
    conv_bn = conv_bn_pairs(model)
    graph = build_graph(model, imgsz)
    groups, scores = slimmable_groups(graph, held_layers(model, hold), conv_bn)
    owner = {}  # BatchNorm of a slimmable group -> name of the group's root conv
    for g in groups:
        for item in g.items:
            if isinstance(item.dep.target.module, nn.BatchNorm2d):
                owner.setdefault(item.dep.target.module, names.get(g[0].dep.target.module, "?"))
    report = SlimReport(bns=list(owner), hist_before=gamma_histogram(list(owner)))
    if not groups:
        LOGGER.warning(f"{PREFIX}no slimmable channels: the model has no BatchNorm behind its prunable convolutions")
    pairs = twin_halves(model, graph, groups) if equal_halves else []
    selections, info = select_tied(scores, pairs, rate, threshold, min_channels, round_to)
    report.total, report.requested, report.removed = info["total"], info["requested"], info["removed"]
    report.threshold, report.clamped = info["threshold"], info["clamped"]
    before = {m: m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)}

    model.eval()
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
    with torch.no_grad():
        original = [t.detach().clone() for t in raw_head_outputs(model, x)]
    plans, wanted = plan_removal(graph, groups, selections)
    zeroed, report.folded, report.unfolded = fold_constant_inputs(model, x, wanted, conv_bn, fold)
    for root, idxs in plans:  # each group re-derived now, so concat offsets follow the groups already removed
        graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs).prune()
    with torch.no_grad():
        slimmed = [t.detach().clone() for t in raw_head_outputs(model, x)]

    report.fold_error = relative_diff(slimmed, zeroed)
    report.output_change = relative_diff(slimmed, original)
    report.hist_after = gamma_histogram(report.bns)
    report.layers = [
        {"name": names.get(bn, "?"), "group": owner.get(bn, ""), "prunable": bn in owner, "channels_before": n,
         "channels_after": bn.num_features, "removed": n - bn.num_features, "threshold": report.threshold}
        for bn, n in before.items()
    ]  # fmt: skip
    log_slim(report, rate, threshold, min_channels, len(plans))
    return report


def log_slim(report: SlimReport, rate: float, threshold: float, min_channels: int, n_groups: int) -> None:
    """Log what `slim_model` removed and folded, with a warning when `min_channels` kept asked-for channels."""
    pct = f"{report.removed}/{report.total} channels ({report.ratio:.1%})"
    if report.clamped:
        LOGGER.warning(
            f"{PREFIX}{f'threshold={threshold:g}' if threshold > 0 else f'rate={rate:g}'} asks to remove "
            f"{report.requested}/{report.total} channels, more than min_channels={min_channels} allows in some "
            f"layers; removed {pct} instead"
        )
    LOGGER.info(
        f"{PREFIX}removed {pct} below |gamma| {report.threshold:.3g} in {n_groups} groups; folded {report.folded} "
        f"constant channel inputs ({report.unfolded} not foldable), fold error {report.fold_error:.2e}, output "
        f"change {report.output_change:.2e}"
    )


class NetworkSlimmer(PruneRun):
    """`yolo slim`: Network Slimming by BatchNorm gamma in one step, then fine-tuning.

    The step removes the `rate` share of prunable channels with the smallest combined |gamma| (or those below
    `threshold`), folding dead channels' constant outputs into their consumers; the loop around it validates,
    fine-tunes for `epochs`, applies `max_map_drop` and resumes like any run. Besides `slim_results.csv` it writes
    `slim_layers.csv` (channels per BatchNorm before and after) and `gamma_before_after.png`.
    """

    mode = "slim"
    result_name = "slimmed"

    def remove(self, step: int) -> dict:
        """Slim the model in one shot and write the per-layer table and the |gamma| histogram plot."""
        report = slim_model(
            self.model,
            rate=self.args.rate,
            threshold=self.args.threshold,
            min_channels=self.args.min_channels,
            round_to=self.args.round_to,
            imgsz=self.args.imgsz,
            hold=hold_modules(self.model, self.args.hold),
        )
        write_csv(report.layers, self.save_dir / "slim_layers.csv")
        histograms = {"before slimming": report.hist_before, "after slimming": report.hist_after}
        plot_gamma_before_after(histograms, self.save_dir / "gamma_before_after.png", report.threshold)
        return {"ratio": report.requested / max(1, report.total), "removed": report.ratio}
