"""Tests of the width arithmetic (`ultralytics_prune.channels.widths`): rounding to the nearest multiple, never compounding; and
of the width policies built on it (`ultralytics_prune.channels.width_policy`)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ultralytics_prune.channels.width_policy import (
    MAX_RATIO,
    GlobalWidths,
    LatencyAwareWidths,
    SensitivityWidths,
    UniformWidths,
)
from ultralytics_prune.channels.widths import allocate_ratios, global_widths, kept_width, tie_halves

ORIGINALS = (1, 3, 8, 16, 24, 32, 48, 64, 80, 128, 256, 512)
RATIOS = [i / 40 for i in range(40)]


@pytest.mark.parametrize("round_to", [1, 2, 4, 8, 16])
def test_kept_width_is_the_nearest_multiple_never_zero_never_over_removing(round_to):
    for original, ratio in itertools.product(ORIGINALS, RATIOS):
        kept = kept_width(original, ratio, round_to)
        asked = original * (1 - ratio)
        assert 1 <= kept <= original, (original, ratio, kept)
        assert kept >= min(round_to, original), "never below one multiple"
        assert original - kept <= original - asked + round_to, "never removes more than asked by over one multiple"
        if kept < original and kept > round_to:
            assert kept % round_to == 0 and abs(kept - asked) <= round_to / 2 + 1e-9, (original, ratio, kept)


def test_kept_width_examples():
    assert kept_width(16, 0.125, 8) == 16, "torch-pruning's floor would keep 8: half the layer for a 12.5 % step"
    assert kept_width(64, 0.125, 8) == 56
    assert kept_width(16, 0.5, 8) == 8 and kept_width(16, 0.95, 8) == 8
    assert kept_width(3, 0.9, 8) == 3, "a layer narrower than one multiple is kept whole"
    assert kept_width(16, 0.125, 1) == 14


def test_widths_do_not_compound_over_steps():
    """Pruning 64 channels to 0.5 in 1, 2, 4 or 8 steps ends at the same width as one step."""
    for steps in (1, 2, 4, 8):
        width = 64
        for i in range(1, steps + 1):
            width = kept_width(64, 0.5 * i / steps, 8, current=width)
        assert width == 32, steps
    assert kept_width(64, 0.25, 8, current=40) == 40, "channels never come back"


def test_global_widths_follow_one_ranking():
    strong, weak = torch.linspace(10, 11, 32), torch.linspace(0, 1, 32)
    widths = global_widths([strong, weak], [32, 32], ratio=0.5, round_to=1)
    assert widths == [32, 1], "the weak layer loses everything the ranking allows (one channel always stays)"
    widths = global_widths([strong, weak], [32, 32], ratio=0.25, round_to=8)
    assert widths == [32, 16]
    mixed = torch.arange(64.0)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    widths = global_widths([mixed[:32], mixed[32:]], [32, 32], ratio=0.5, round_to=1)
    assert sum(widths) == 32


def test_allocate_ratios_spares_sensitive_layers_at_the_same_total():
    originals, drops = [64, 64, 128, 32, 256], [0.20, 0.01, 0.0, 0.05, 0.002]
    ratios = allocate_ratios(originals, drops, rate=0.3)
    assert sum(r * o for r, o in zip(ratios, originals)) == pytest.approx(0.3 * sum(originals))
    assert ratios[0] < ratios[3] < ratios[1] <= ratios[2], "the more a layer loses alone, the less it is pruned"
    assert all(0 <= r <= 0.9 for r in ratios)
    capped = allocate_ratios([64, 64, 64], [0.5, 0.0, 0.0], rate=0.7, max_ratio=0.9)
    assert capped == pytest.approx([0.3, 0.9, 0.9]), "the cap's excess goes to the others"
    assert allocate_ratios([16, 32], [0.0, 0.0], rate=0.4) == pytest.approx([0.4, 0.4]), "no signal: uniform"


def test_global_widths_keep_each_layers_floor():
    """With `max_layer_ratio`, a layer whose channels all rank last still keeps its best ones up to its floor, and the
    ranking shares out what is left: the total kept is the same."""
    low, high = torch.arange(40, dtype=torch.float) / 1000, 1 + torch.arange(40, dtype=torch.float)
    free = global_widths([low, high], [40, 40], ratio=0.5)
    assert free == [1, 40], "without a floor the low layer keeps only its one channel"
    floored = global_widths([low, high], [40, 40], ratio=0.5, max_layer_ratio=0.75)
    assert floored == [10, 30]


def test_tie_halves_mean_rounded_wider_and_held():
    # pairs: groups 0/1 tied, group 2 with a held sibling, group 3 free
    widths, currents = [8, 24, 8, 8], [32, 32, 32, 32]
    assert tie_halves(widths, currents, [(0, 1), (2, None)], round_to=8) == [16, 16, 32, 8]
    assert tie_halves([8, 16, 8, 8], currents, [(0, 1)], round_to=8) == [16, 16, 8, 8], "the mean 12 rounds up"
    assert tie_halves(widths, currents, [(0, 1)], wider=True) == [24, 24, 8, 8]
    assert tie_halves([8, 24], [32, 16], [(0, 1)], wider=True) == [16, 16], "never above a current width"
    assert tie_halves(widths, currents, []) == widths


def test_every_width_policy_narrows_as_the_run_ratio_rises():
    """Each policy keeps every channel at ratio 0, never widens a group as the ratio rises, never empties one, and
    says how far its ratio may go."""
    torch.manual_seed(0)
    names, originals = ["a", "b", "c"], [32, 64, 16]
    given = (names, [torch.rand(o) for o in originals], originals, 8)
    shares = {"a": 0.1, "b": 0.5, "c": 0.9}
    policies = [UniformWidths(*given), SensitivityWidths(*given, shares, 0.5), GlobalWidths(*given),
                LatencyAwareWidths(*given, costs=[1.0, 2.0, 3.0])]  # fmt: skip
    for policy in policies:
        last = policy(0.0)
        assert last == originals, type(policy).__name__
        for ratio in (0.1, 0.3, 0.5, 0.7, 0.9):
            widths = policy(ratio)
            assert all(1 <= w <= previous for w, previous in zip(widths, last)), (type(policy).__name__, ratio)
            last = widths
        assert sum(last) < 0.5 * sum(originals), type(policy).__name__
    sensitivity = policies[1]
    assert sensitivity.ratios(0.5) == pytest.approx([0.1, 0.5, 0.9])
    assert sensitivity.max_ratio == pytest.approx(MAX_RATIO * 0.5 / 0.1) == SensitivityWidths.top(shares, 0.5)
    assert UniformWidths(*given).max_ratio == MAX_RATIO
