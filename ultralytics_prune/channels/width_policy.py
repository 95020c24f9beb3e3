"""How many channels each group keeps when the run as a whole is at a ratio: interchangeable width policies.

A policy is made for the scored groups of one `GroupPruner` (their names, importance scores and current widths) and
maps the run's cumulative ratio to the width of every group, narrower as the ratio rises. The MACs and latency goals
search the ratio of whichever policy the run uses (`macs_model.widths_for_macs`), so a new policy plugs into every
goal. `max_ratio` is the run ratio past which a policy cuts no further.

- `UniformWidths`: every layer loses the run's ratio of its original width.
- `SensitivityWidths`: every layer loses its own share from the sensitivity scan (`sensitivity`), scaled with the run.
- `GlobalWidths`: one ranking of importance across all layers (`global_pruning`).
- `LatencyAwareWidths`: one ranking of importance per millisecond the channel costs (`latency_aware`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ultralytics_prune.channels.widths import global_widths, kept_width

MAX_RATIO = 0.95  # no run ratio (or layer share) past this: every layer keeps something
# With latency_aware, every layer keeps at least this share of the width a uniform cut would leave it: per millisecond,
# a flat ranking (e.g. an untrained model) would otherwise empty the slow layers down to `round_to` channels.
MIN_KEEP = 0.5


class WidthPolicy:
    """Run ratio -> width of every group (see the module docstring).

    Args:
        names (Sequence[str]): The groups' root convolutions, by module name.
        scores (Sequence[torch.Tensor]): The importance of every current channel of each group.
        originals (Sequence[int]): Each group's width in the unpruned model.
        round_to (int): Widths are multiples of this.
    """

    max_ratio = MAX_RATIO

    def __init__(self, names: Sequence[str], scores: Sequence[torch.Tensor], originals: Sequence[int], round_to: int):
        """Keep what every policy reads."""
        self.names, self.scores, self.originals, self.round_to = list(names), list(scores), list(originals), round_to
        self.current = [len(s) for s in scores]

    def __call__(self, ratio: float) -> list[int]:
        """The width of every group at the run ratio `ratio`, never above its current width."""
        return [kept_width(o, r, self.round_to, c) for o, r, c in zip(self.originals, self.ratios(ratio), self.current)]

    def ratios(self, ratio: float) -> list[float]:
        """The share of its original width each group loses at the run ratio `ratio`."""
        raise NotImplementedError


class UniformWidths(WidthPolicy):
    """Every group loses the run's ratio of its original width."""

    def ratios(self, ratio: float) -> list[float]:
        """`ratio` for every group."""
        return [ratio] * len(self.names)


class SensitivityWidths(WidthPolicy):
    """Every group loses its share from the sensitivity scan, scaled by the run's progress toward `rate`.

    Args:
        shares (dict[str, float]): Each layer's share at the run ratio `rate` (layers absent lose `rate`).
        rate (float): The run ratio the shares are for.
    """

    def __init__(self, names, scores, originals, round_to: int, shares: dict[str, float], rate: float):
        """Keep the shares; see `WidthPolicy`."""
        super().__init__(names, scores, originals, round_to)
        self.shares, self.rate = shares, rate
        self.max_ratio = self.top(shares, rate)

    @staticmethod
    def top(shares: dict[str, float], rate: float) -> float:
        """The run ratio at which the least-cut layer that may lose anything reaches `MAX_RATIO` too (at least
        `MAX_RATIO`). A MACs goal beyond what insensitive layers alone give (a converged YOLOv8n, `speedup=2`: x1.64
        with every run ratio <= 0.95) then cuts the sensitive ones as well, in proportion to their shares."""
        positive = [s for s in shares.values() if s > 0]
        return max(MAX_RATIO, MAX_RATIO * rate / min(positive)) if positive else MAX_RATIO

    def ratios(self, ratio: float) -> list[float]:
        """Each layer's share times `ratio / rate`, at most `MAX_RATIO`."""
        return [min(MAX_RATIO, self.shares.get(name, self.rate) * ratio / self.rate) for name in self.names]


class GlobalWidths(WidthPolicy):
    """One ranking of all channels by importance: the lowest-ranked go until the run's ratio of all is removed."""

    def __call__(self, ratio: float) -> list[int]:
        """The widths the ranking leaves (see `widths.global_widths`)."""
        return global_widths(self.scores, self.originals, ratio, self.round_to)


class LatencyAwareWidths(WidthPolicy):
    """One ranking of all channels by importance per millisecond the channel costs on the latency backend; every
    group keeps at least `MIN_KEEP` of what a uniform cut would leave it.

    Args:
        costs (Sequence[float]): The milliseconds one channel of each group costs (see `latency_table.channel_costs`).
    """

    def __init__(self, names, scores, originals, round_to: int, costs: Sequence[float]):
        """Rank by importance per millisecond; see `WidthPolicy`."""
        super().__init__(names, scores, originals, round_to)
        self.per_ms = [score / max(cost, 1e-9) for score, cost in zip(scores, costs)]

    def __call__(self, ratio: float) -> list[int]:
        """The widths the ranking per millisecond leaves, floored at `MIN_KEEP` of the uniform cut's."""
        return global_widths(self.per_ms, self.originals, ratio, self.round_to, 1 - MIN_KEEP * (1 - ratio))
