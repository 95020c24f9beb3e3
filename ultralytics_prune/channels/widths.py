"""How many channels each layer keeps: the arithmetic of a pruning schedule, apart from any model.

Every width is computed from the layer's original width and the cumulative share asked for so far, so rounding never
compounds across steps, and is rounded to the nearest multiple of `round_to` (torch-pruning 1.6 floors instead: a
16-channel layer asked to lose 12.5 % loses 50 % with round_to=8). A layer never drops to zero, never grows back, and
never loses more than asked by more than half a multiple.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def step_ratios(rate: float, steps: int) -> list[float]:
    """Cumulative share removed after each step (linear schedule, as torch-pruning's), step 0 = 0."""
    return [rate * i / steps for i in range(steps + 1)]


def kept_width(original: int, ratio: float, round_to: int = 1, current: int | None = None) -> int:
    """Channels a layer of `original` channels keeps when the cumulative share `ratio` of them is removed.

    Args:
        original (int): The layer's width before any pruning.
        ratio (float): Cumulative share asked to be removed, 0 <= ratio < 1.
        round_to (int): Keep a multiple of this (the nearest one); 1 = no rounding.
        current (int | None): The layer's width now; the result never exceeds it (channels do not come back).

    Returns:
        (int): The width to keep, at least one multiple of `round_to` (or the whole layer when it is narrower).
    """
    step = max(1, round_to)
    kept = math.floor(original * (1 - ratio) / step + 0.5) * step
    kept = max(min(step, original), min(original, kept))
    return kept if current is None else min(kept, current)


def global_widths(
    scores: Sequence[torch.Tensor],
    originals: Sequence[int],
    ratio: float,
    round_to: int = 1,
    max_layer_ratio: float = 1.0,
) -> list[int]:
    """Widths from one ranking of all channels: the lowest-scored go until the share `ratio` of all is removed.

    Args:
        scores (Sequence[torch.Tensor]): Importance of every current channel, one tensor per layer (group).
        originals (Sequence[int]): Each layer's original width (the share is of their sum).
        ratio (float): Cumulative share of all original channels to remove.
        round_to (int): Each layer keeps the nearest multiple of this to what the ranking left it.
        max_layer_ratio (float): No layer loses more than this share of its original width: each first keeps its
            best-scored channels up to that floor, and the ranking shares out the rest.

    Returns:
        (list[int]): The width each layer keeps, never above its current width.
    """
    currents = [len(s) for s in scores]
    keep_total = min(sum(currents), math.floor(sum(originals) * (1 - ratio) + 0.5))
    floors = [min(c, math.ceil(o * (1 - max_layer_ratio))) for o, c in zip(originals, currents)]
    flat = torch.cat([s.float().flatten().cpu() for s in scores]) if scores else torch.zeros(0)
    kept = torch.zeros(len(flat), dtype=torch.bool)
    start = 0
    for score, floor in zip(scores, floors):
        kept[start + torch.sort(score.float().cpu(), descending=True, stable=True).indices[:floor]] = True
        start += len(score)
    rest = (~kept).nonzero().flatten()
    free = max(0, keep_total - int(kept.sum()))
    kept[rest[torch.sort(flat[rest], descending=True, stable=True).indices[:free]]] = True
    widths, start = [], 0
    for original, current in zip(originals, currents):
        ranked = int(kept[start : start + current].sum())
        start += current
        widths.append(kept_width(original, 1 - ranked / original, round_to, current))
    return widths


def allocate_ratios(
    originals: Sequence[int], drops: Sequence[float], rate: float, max_ratio: float = 0.9, floor: float = 0.0
) -> list:
    """Per-layer ratios that remove the share `rate` of all channels, less from the layers that are more sensitive.

    A layer's ratio is proportional to 1 / (drop + eps), where `drop` is the mAP lost when that layer alone is pruned
    at `rate` and eps is the median drop or `floor`, whichever is larger (so that noise-level drops do not dominate),
    scaled so that the channel-weighted mean is `rate`; ratios above `max_ratio` are capped and the rest shared by the
    others.

    Args:
        originals (Sequence[int]): Each layer's original width.
        drops (Sequence[float]): mAP lost when each layer alone is pruned (negative values count as 0).
        rate (float): Share of all channels to remove.
        max_ratio (float): Largest share any one layer loses.
        floor (float): The smallest eps: drops well below it are taken as noise, alike.

    Returns:
        (list[float]): One ratio per layer.
    """
    drops = [max(0.0, float(d)) for d in drops]
    eps = max(sorted(drops)[len(drops) // 2] if drops else 0.0, floor, 1e-3)
    weights = [1 / (d + eps) for d in drops]
    ratios = [0.0] * len(originals)
    free = set(range(len(originals)))
    budget = rate * sum(originals)
    while free:
        scale = budget / max(1e-12, sum(weights[i] * originals[i] for i in free))
        capped = {i for i in free if weights[i] * scale > max_ratio}
        if not capped:
            for i in free:
                ratios[i] = weights[i] * scale
            break
        for i in capped:
            ratios[i] = max_ratio
            budget -= max_ratio * originals[i]
        free -= capped
    return ratios


def tie_halves(
    widths: Sequence[int],
    currents: Sequence[int],
    pairs: Sequence[tuple[int | None, int | None]],
    round_to: int = 1,
    wider: bool = False,
) -> list[int]:
    """Widths with both halves of every block twin equally wide: the mean of the two asked (or with `wider` the
    wider), rounded up to a multiple of `round_to`, never above either's current width (channels do not come back);
    a half whose sibling is held (None) keeps its current width.

    The mean keeps the share of channels a width policy removes, each half getting the middle of what the policy
    gave the two; the wider never removes a channel that its own half kept (Network Slimming's selection stays
    lossless). Ultralytics' `C2f`, `C3k2` and `C2PSA` hold one conv split into two equal halves
    (`graph.twin_halves`).

    Args:
        widths (Sequence[int]): Width asked for each group.
        currents (Sequence[int]): Each group's current width.
        pairs (Sequence[tuple[int | None, int | None]]): Group indices of the two halves of each twin.
        round_to (int): Round a mean up to a multiple of this.
        wider (bool): Tie to the wider half instead of the mean.

    Returns:
        (list[int]): The widths, tied.
    """
    step = max(1, round_to)
    tied = list(widths)
    for _ in range(len(pairs) + 1):  # a group in several pairs may need another pass
        before = list(tied)
        for first, second in pairs:
            if first is None or second is None:
                for held_sibling in (first, second):
                    if held_sibling is not None:
                        tied[held_sibling] = currents[held_sibling]
                continue
            if tied[first] != tied[second]:
                width = max(tied[first], tied[second]) if wider else (tied[first] + tied[second]) / 2
                width = math.ceil(width / step) * step
                tied[first] = tied[second] = min(width, currents[first], currents[second])
        if tied == before:
            break
    return tied
