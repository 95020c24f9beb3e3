"""Network Slimming's selection maths: score each channel by its BatchNorm |gamma|, pick the ones to remove.

A channel is scored a whole DepGraph group at a time (a conv's output channel together with every coupled channel
behind residual adds, concatenations and the convolutions reading it): its score is the largest |gamma| over all
BatchNorms of its group at that channel, so it goes only when every coupled BatchNorm agrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ultralytics_prune.channels.graph import is_out_channels
from ultralytics_prune.channels.widths import tie_halves


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
        if not is_out_channels(graph, item) or not isinstance(module, nn.Module):
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


def tie_selections(
    selections: list[list[int]], scores: Sequence[torch.Tensor], pairs: Sequence, round_to: int = 1
) -> list[list[int]]:
    """`selections` with both halves of every block twin keeping as many channels, the more of the two (see
    `widths.tie_halves`): a half asked to lose more drops only its lowest-scored channels down to that count, so
    nothing is removed that its own selection kept."""
    currents = [s.numel() for s in scores]
    keeps = tie_halves([n - len(sel) for n, sel in zip(currents, selections)], currents, pairs, round_to, wider=True)
    return [sel if n - len(sel) == keep else sorted(torch.sort(s, stable=True).indices[: n - keep].tolist())
            for sel, s, n, keep in zip(selections, scores, currents, keeps)]  # fmt: skip


def select_tied(
    scores: Sequence[torch.Tensor],
    pairs: Sequence,
    rate: float = 0.5,
    threshold: float = 0.0,
    min_channels: int = 1,
    round_to: int = 1,
) -> tuple[list[list[int]], dict]:
    """`select_channels`, then `tie_selections`; with a `rate`, the ranking goes on down until the tied selection
    removes the share asked (tying keeps channels a half's own selection marked).

    Returns:
        (list[list[int]], dict): As `select_channels`, with `removed` counted after tying and `requested` the share
            asked of all channels.
    """
    asked = rate
    for _ in range(20):
        selections, info = select_channels(scores, asked, threshold, min_channels, round_to)
        selections = tie_selections(selections, scores, pairs, round_to)
        removed, wanted = sum(len(sel) for sel in selections), rate * info["total"]
        if threshold > 0 or removed >= wanted - 0.5 or asked >= 0.99:
            break
        asked = min(0.99, asked + (wanted - removed) / max(1, info["total"]))
    if threshold <= 0:
        info["requested"] = int(round(rate * info["total"]))
    return selections, {**info, "removed": removed}
