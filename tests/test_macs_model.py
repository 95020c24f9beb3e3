"""Tests of `macs_model`: MACs predicted from one trace equal the counted MACs of the cut model, and a MACs goal is met
with coarse rounding without cutting far past it."""

from __future__ import annotations

from copy import deepcopy

import pytest
from ultralytics.nn.tasks import DetectionModel, SegmentationModel

from ultralytics_prune.channels.graph import held_layers
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.channels.widths import kept_width
from ultralytics_prune.measure.macs_model import MacsModel, widths_for_macs
from ultralytics_prune.measure.report import count_macs_params, example_input
from ultralytics_prune.patches.blocks import replace_blocks

IMGSZ = 96


def traced(cfg: str, round_to: int = 16):
    """A yaml model with its twins, its group pruner and its MACs model."""
    model = (SegmentationModel if "seg" in cfg else DetectionModel)(cfg, verbose=False)
    replace_blocks(model)
    pruner = GroupPruner(model, build_importance("l2"), held_layers(model), IMGSZ, round_to)
    total = count_macs_params(model, IMGSZ)[0]
    return model, pruner, MacsModel(model, pruner, total, example_input(model, IMGSZ)), total


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml", "yolov8n-seg.yaml"])
def test_predicted_macs_match_the_counted_cut_model(cfg):
    model, pruner, macs, total = traced(cfg)
    assert macs(pruner.widths()) == pytest.approx(total, rel=1e-12)
    for ratio in (0.3, 0.55):
        widths = [kept_width(w, ratio, 16) for w in pruner.widths()]
        cut = deepcopy(model)
        GroupPruner(cut, build_importance("l2"), held_layers(cut), IMGSZ, 16).prune(widths)
        counted = count_macs_params(cut, IMGSZ)[0]
        assert counted < 0.8 * total
        assert macs(widths) == pytest.approx(counted, rel=2e-3), (cfg, ratio)


def test_a_macs_goal_is_met_closely_where_rounding_moves_many_layers_at_once():
    """yolo11n with round_to=16 and speedup 2: the first uniform ratio under the goal cut to x2.75 (measured); moving
    the groups that narrow there one at a time ends just under the goal."""
    model, pruner, macs, total = traced("yolo11n.yaml")
    current = pruner.widths()

    def uniform(ratio):
        return [kept_width(w, ratio, 16, c) for w, c in zip(current, current)]

    goal = total / 2
    widths, ratio = widths_for_macs(uniform, macs, goal, 0.0)
    assert macs(widths) <= goal
    assert macs(widths) > 0.95 * goal, f"cut to x{total / macs(widths):.2f} for a goal of x2"
    assert macs(uniform(ratio)) <= goal < macs(uniform(ratio - 1e-6))
    assert all(min(16, c) <= w <= c for w, c in zip(widths, current))
    cut = deepcopy(model)
    GroupPruner(cut, build_importance("l2"), held_layers(cut), IMGSZ, 16).prune(widths)
    assert count_macs_params(cut, IMGSZ)[0] <= goal


def test_an_unreachable_goal_gives_the_narrowest_widths():
    _, pruner, macs, total = traced("yolov8n.yaml")
    current = pruner.widths()
    widths, ratio = widths_for_macs(lambda r: [kept_width(c, r, 16) for c in current], macs, total / 1000, 0.0)
    assert ratio == 0.95 and widths == [kept_width(c, 0.95, 16) for c in current]
