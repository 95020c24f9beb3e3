"""Network Slimming (`yolo slim`): remove the channels whose BatchNorm scale (gamma) is small, then fine-tune.

Liu et al., "Learning Efficient Convolutional Networks through Network Slimming" (ICCV 2017): after sparsity training
(`yolo train ... sr=1e-4`) many BatchNorm gammas are close to zero; the channels behind them are removed in one shot.

Channels are removed a whole DepGraph group at a time (a conv's output channel together with every coupled channel
behind residual adds, concatenations and the convolutions reading it). A channel's score is the largest |gamma| over
all BatchNorms of its group at that channel, so it goes only when every coupled BatchNorm agrees.

A channel whose gamma is zero is not silent: it outputs the constant act(beta). Before it is removed that constant is
folded into every convolution that reads it (into the conv's bias, or into the running mean of the BatchNorm behind
it), which makes removing a dead channel lossless for 1x1 consumers and exact away from the zero-padded border for
kxk consumers. The constants are read from one forward pass of the model with the removed channels' gammas set to 0,
so residual adds, concatenations, upsampling and max-pooling between producer and consumer need no special rules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.utils import LOGGER, colorstr

from ultralytics_prune.engine import PruneRun
from ultralytics_prune.graph import build_graph, held_layers, prunable_groups, raw_head_outputs
from ultralytics_prune.report import write_csv
from ultralytics_prune.sparsity import HIST_EDGES, gamma_histogram

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


# --------------------------------------------------------------------------------------------------- graph helpers
def conv_bn_pairs(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Map each convolution to the BatchNorm applied right after it (Ultralytics `Conv`, `DWConv`: `.conv` + `.bn`)."""
    return {
        m.conv: m.bn
        for m in model.modules()
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
    }


def _is_out(graph: tp.DependencyGraph, item) -> bool:
    return graph.is_out_channel_pruning_fn(item.dep.handler)


def _pairs(item) -> list[tuple[int, int]]:
    """(local index, root index) pairs of a group item, without the unmapped ones."""
    return [(i, r) for i, r in zip(item.idxs, item.root_idxs) if r is not None]


def group_scores(graph: tp.DependencyGraph, group, conv_bn: dict) -> torch.Tensor | None:
    """Combined |gamma| of every root channel of `group`: the max over all BatchNorms of the group at that channel.

    Returns None when the group cannot be slimmed: a layer producing its channels has no BatchNorm in the group
    (a fused conv, a conv followed by something else) or a layer other than Conv2d/BatchNorm2d produces them. Root
    channels that no BatchNorm covers score +inf (never removed).
    """
    root = group[0].dep.target.module
    n = root.out_channels
    members = {item.dep.target.module for item in group.items}
    score = torch.full((n,), -math.inf)
    for item in group.items:
        module = item.dep.target.module
        if not _is_out(graph, item) or not isinstance(module, nn.Module):
            continue
        if isinstance(module, nn.BatchNorm2d):
            pairs = _pairs(item)
            if not pairs or not module.affine:
                continue
            local, roots = (torch.tensor(x) for x in zip(*pairs))
            gamma = module.weight.detach().abs().float().cpu()[local]
            score.scatter_reduce_(0, roots, gamma, reduce="amax")
        elif isinstance(module, nn.Conv2d):
            if conv_bn.get(module) not in members:
                return None
        elif len(list(module.parameters(recurse=False))) or len(list(module.children())):
            return None  # e.g. a Linear or LayerNorm producing the channels: gamma says nothing about them
    score[score == -math.inf] = math.inf
    return score


def keep_count(n: int, marked: int, min_channels: int, round_to: int) -> int:
    """Channels a layer of `n` keeps when `marked` are selected: at least `min_channels`, rounded up to `round_to`."""
    keep = max(n - marked, min(min_channels, n), 1)
    if round_to > 1:
        keep = min(n, math.ceil(keep / round_to) * round_to)
    return keep


def select_channels(
    scores: Sequence[torch.Tensor], rate: float = 0.5, threshold: float = 0.0, min_channels: int = 1, round_to: int = 1
) -> tuple[list[list[int]], dict]:
    """Pick the channels to remove in each group from their combined |gamma|.

    With `threshold > 0` a channel goes when its score is below it; otherwise the `rate` share of all channels with
    the lowest scores goes (one global ranking). Each group then keeps at least `min_channels` (never none), its kept
    count rounded up to a multiple of `round_to`, always dropping its lowest scores first.

    Returns:
        (list[list[int]], dict): Root channel indices to remove per group, and `total`, `requested`, `removed`,
            `threshold` (the given one, or the largest score removed by the rate) and `clamped` (min_channels kept
            channels that were asked for).
    """
    finite = [s[torch.isfinite(s)] for s in scores]
    total = int(sum(s.numel() for s in finite))
    if threshold > 0:
        marked = [s < threshold for s in scores]
    else:
        k = min(int(round(rate * total)), total)
        flat = torch.cat(finite) if total else torch.zeros(0)
        order = torch.sort(flat, stable=True).indices[:k]
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[order] = True
        threshold = float(flat[order].max()) if k else 0.0
        marked, start = [], 0
        for s in scores:
            m = torch.zeros(s.numel(), dtype=torch.bool)
            fin = torch.isfinite(s)
            m[fin] = chosen[start : start + int(fin.sum())]
            start += int(fin.sum())
            marked.append(m)
    selections, requested, removed, clamped = [], 0, 0, False
    for s, m in zip(scores, marked):
        n, want = s.numel(), int(m.sum())
        keep = keep_count(n, want, min_channels, round_to)
        clamped |= want > n - min(max(min_channels, 1), n)
        order = torch.sort(s, stable=True).indices[: n - keep]  # the lowest scores, a subset of the marked ones
        selections.append(sorted(order.tolist()))
        requested += want
        removed += n - keep
    return selections, {
        "total": total,
        "requested": requested,
        "removed": removed,
        "threshold": float(threshold),
        "clamped": clamped,
    }


# ------------------------------------------------------------------------------------------------------ the fold
def _relative_diff(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max |a - b| over all tensors, divided by max |b| (both lists of the same shapes)."""
    if not reference:
        return 0.0
    diff = max(float((a - b).abs().max()) if b.numel() else 0.0 for a, b in zip(outputs, reference))
    scale = max(float(b.abs().max()) if b.numel() else 0.0 for b in reference)
    return diff / max(scale, 1e-12)


@torch.no_grad()
def _capture_inputs(model: nn.Module, x: torch.Tensor, wanted: dict[nn.Conv2d, list[int]]):
    """Run `model` once; return its raw head outputs and, per conv in `wanted`, its input at those channels."""
    seen = {}

    def hook(module, inputs):
        seen[module] = inputs[0][:, wanted[module]].detach().clone()

    handles = [conv.register_forward_pre_hook(hook) for conv in wanted]
    try:
        outputs = [t.detach().clone() for t in raw_head_outputs(model, x)]
    finally:
        for h in handles:
            h.remove()
    return outputs, seen


@torch.no_grad()
def fold_into_consumer(conv: nn.Conv2d, idxs: Sequence[int], values: torch.Tensor, bn: nn.BatchNorm2d | None) -> None:
    """Make `conv` behave as if its input channels `idxs` still carried the constants `values` once they are removed.

    The missing contribution is sum over the kernel of W[:, c] * value (exact for 1x1 kernels; at the border of a
    zero-padded kxk conv fewer taps hit real pixels, so there it is approximate). It goes into the conv's bias, or,
    for a conv without bias followed by BatchNorm, into the running mean: bn(y - d) with mean - d equals bn(y).
    """
    w = conv.weight.detach()[:, list(idxs)].sum(dim=(2, 3))  # (out, k)
    delta = w @ values.to(w)
    if conv.bias is not None:
        conv.bias.add_(delta)
    elif bn is not None:
        bn.running_mean.sub_(delta.to(bn.running_mean))
    else:
        conv.bias = nn.Parameter(delta.clone(), requires_grad=conv.weight.requires_grad)


# ------------------------------------------------------------------------------------------------- the recipe core
def slim_model(
    model: nn.Module,
    rate: float = 0.5,
    threshold: float = 0.0,
    min_channels: int = 1,
    round_to: int = 1,
    imgsz: int = 64,
    hold: Iterable[nn.Module] = (),
    fold: bool = True,
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
        fold (bool): Fold the constant output of each removed channel into its consumers (see module docstring).

    Returns:
        (SlimReport): Counts, threshold, fold error and per-layer rows. The model is left in eval mode.
    """
    imgsz = max(64, int(imgsz))
    names = {m: n for n, m in model.named_modules()}
    conv_bn = conv_bn_pairs(model)
    graph = build_graph(model, imgsz)
    groups, scores = [], []
    for group in prunable_groups(graph, held_layers(model, hold)):
        s = group_scores(graph, group, conv_bn)
        if s is not None:
            groups.append(group)
            scores.append(s)
    report = SlimReport()
    owner = {}  # BatchNorm of a slimmable group -> name of the group's root conv
    for g in groups:
        for item in g.items:
            if isinstance(item.dep.target.module, nn.BatchNorm2d):
                owner.setdefault(item.dep.target.module, names.get(g[0].dep.target.module, "?"))
    report.bns = list(owner)
    report.hist_before = gamma_histogram(report.bns)
    if not groups:
        LOGGER.warning(f"{PREFIX}no slimmable channels: the model has no BatchNorm behind its prunable convolutions")
    selections, info = select_channels(scores, rate, threshold, min_channels, round_to)
    report.total, report.requested, report.removed = info["total"], info["requested"], info["removed"]
    report.threshold, report.clamped = info["threshold"], info["clamped"]
    before = {m: m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)}

    model.eval()
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
    with torch.no_grad():
        original = [t.detach().clone() for t in raw_head_outputs(model, x)]

    # 1. every removal as a group, all computed before anything changes; dead channels' gammas set to exactly 0
    plans = []
    wanted: dict[nn.Conv2d, list[int]] = {}
    with torch.no_grad():
        for group, idxs in zip(groups, selections):
            if not idxs:
                continue
            root = group[0].dep.target.module
            plan = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs)
            plans.append((root, idxs, plan))
            produced = {it.dep.target.module for it in plan.items if _is_out(graph, it)}
            for item in plan.items:
                module = item.dep.target.module
                if isinstance(module, nn.BatchNorm2d) and _is_out(graph, item):
                    module.weight[list(item.idxs)] = 0.0
                elif isinstance(module, nn.Conv2d) and not _is_out(graph, item) and module not in produced:
                    wanted.setdefault(module, [])
                    wanted[module] = sorted(set(wanted[module]) | set(item.idxs))

    # 2. read the constants every consumer sees at the removed channels, and fold them in
    zeroed, seen = _capture_inputs(model, x, wanted) if plans else (original, {})
    if fold:
        for conv, idxs in wanted.items():
            values = seen.get(conv)
            if values is None:  # not reached by the forward pass
                report.unfolded += len(idxs)
                continue
            flat = values.transpose(0, 1).flatten(1)  # (k, B*H*W)
            const = flat.mean(1)
            spread = flat.max(1).values - flat.min(1).values
            ok = spread <= 1e-5 * (1 + const.abs())
            if conv.groups != 1:
                ok[:] = False
            report.unfolded += int((~ok).sum())
            if ok.any():
                sel = [i for i, good in zip(idxs, ok.tolist()) if good]
                fold_into_consumer(conv, sel, const[ok], conv_bn.get(conv))
                report.folded += len(sel)
    else:
        report.unfolded = sum(len(v) for v in wanted.values())

    # 3. remove: each group is re-derived now, so concat offsets follow the groups already removed
    for root, idxs, _ in plans:
        graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs).prune()

    with torch.no_grad():
        slimmed = [t.detach().clone() for t in raw_head_outputs(model, x)]
    report.fold_error = _relative_diff(slimmed, zeroed)
    report.output_change = _relative_diff(slimmed, original)
    report.hist_after = gamma_histogram(report.bns)
    report.layers = [
        {
            "name": names.get(bn, "?"),
            "group": owner.get(bn, ""),
            "prunable": bn in owner,
            "channels_before": before.get(bn, bn.num_features),
            "channels_after": bn.num_features,
            "removed": before.get(bn, bn.num_features) - bn.num_features,
            "threshold": report.threshold,
        }
        for bn in before
    ]

    pct = f"{report.removed}/{report.total} channels ({report.ratio:.1%})"
    if report.clamped:
        LOGGER.warning(
            f"{PREFIX}{f'threshold={threshold:g}' if threshold > 0 else f'rate={rate:g}'} asks to remove "
            f"{report.requested}/{report.total} channels, more than min_channels={min_channels} allows in some "
            f"layers; removed {pct} instead"
        )
    LOGGER.info(
        f"{PREFIX}removed {pct} below |gamma| {report.threshold:.3g} in {len(plans)} groups; folded {report.folded} "
        f"constant channel inputs ({report.unfolded} not foldable), fold error {report.fold_error:.2e}, output "
        f"change {report.output_change:.2e}"
    )
    return report


def plot_gamma_before_after(histograms: dict[str, np.ndarray], file: str | Path, threshold: float = 0.0) -> Path:
    """Plot |gamma| histograms (log10 axis, `HIST_EDGES` bins) of the prunable BatchNorms, one curve per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    fig, ax = plt.subplots(figsize=(8, 4.5), tight_layout=True)
    for label, counts in histograms.items():
        ax.step(centers, counts, where="mid", label=f"{label} ({int(np.sum(counts))} channels)", linewidth=2)
    if threshold > 0:
        ax.axvline(np.log10(threshold), color="k", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("log10 |gamma|")
    ax.set_ylabel("channels")
    ax.set_title("BatchNorm |gamma| of the prunable layers")
    ax.grid(alpha=0.3)
    ax.legend()
    file = Path(file)
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file


class NetworkSlimmer(PruneRun):
    """`yolo slim`: Network Slimming by BatchNorm gamma in one step, then fine-tuning.

    The step removes the `rate` share of prunable channels with the smallest combined |gamma| (or those below
    `threshold`), folding dead channels' constant outputs into their consumers, validates ("pre"), fine-tunes for
    `epochs` and validates again ("post"). Besides `slim_results.csv` it writes `slim_layers.csv` (channels per
    BatchNorm before and after) and `gamma_before_after.png`.
    """

    mode = "slim"
    result_name = "slimmed"

    def steps(self) -> Iterator[dict]:
        """Slim, validate, fine-tune, validate; one row (step 1)."""
        from ultralytics_prune.pruner import hold_modules

        if self.resuming and self.load_resume_state() > 1:
            return  # the step finished; only the final save and export were missing
        report = slim_model(
            self.model,
            rate=self.args.rate,
            threshold=self.args.threshold,
            min_channels=self.args.min_channels,
            round_to=self.args.round_to,
            imgsz=self.args.imgsz,
            hold=hold_modules(self.model, self.args.hold),
        )
        self.model.zero_grad(set_to_none=True)
        self.report = report
        write_csv(report.layers, self.save_dir / "slim_layers.csv")
        histograms = {"before slimming": report.hist_before, "after slimming": report.hist_after}
        map50_pre, map_pre = self.validate(self.model)
        if self.args.finetune_epochs > 0:
            self.finetune(self.model, self.save_dir / "finetune", self.args.finetune_epochs)
            map50_post, map_post = self.validate(self.model)
            histograms["after fine-tuning"] = gamma_histogram(report.bns)
        else:
            map50_post, map_post = map50_pre, map_pre
        plot_gamma_before_after(histograms, self.save_dir / "gamma_before_after.png", report.threshold)
        row = {
            "step": 1,
            "ratio": report.ratio,
            **self.measure(self.model),
            "mAP50_pre": map50_pre,
            "mAP50-95_pre": map_pre,
            "mAP50_post": map50_post,
            "mAP50-95_post": map_post,
        }
        self.save_step(self.save_dir / "step1")
        self.record(row)
        yield row

    def save_step(self, step_dir: Path) -> None:
        """Keep the slimmed (and fine-tuned) model, so a resumed run only has to save and export it."""
        from ultralytics_prune.checkpoint import save_checkpoint
        from ultralytics_prune.config import ultralytics_args

        self.mark_pruned(self.model)
        save_checkpoint(self.model, step_dir / "weights" / "step.pt", train_args=vars(ultralytics_args(self.args)))
