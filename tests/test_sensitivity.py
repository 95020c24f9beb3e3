"""The sensitivity scan: a cut simulated by zeroing computes what the pruned model computes, and the model comes back.

CPU only: models built from Ultralytics' yaml files (untrained, BatchNorm statistics randomized so that every
channel carries something), 64 px inputs.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
import torch.nn as nn
from ultralytics.nn.tasks import DetectionModel, SegmentationModel

from ultralytics_prune.channels.graph import held_layers
from ultralytics_prune.channels.calibrate import FORWARD_MACS
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.channels.sensitivity import (
    MIN_SCAN_IMAGES,
    NOISE_FLOOR,
    SENSITIVITY_IMAGES,
    scan_images,
    scan_sensitivity,
    sensitivity_ratios,
)
from ultralytics_prune.channels.widths import kept_width
from ultralytics_prune.measure.report import count_macs_params
from ultralytics_prune.patches.blocks import replace_blocks

RATE = 0.5


def built(yaml: str) -> nn.Module:
    """`yaml` for 3 classes, block twins swapped in, BatchNorm weights and statistics randomized, in eval mode."""
    torch.manual_seed(0)
    model = (SegmentationModel if "-seg" in yaml else DetectionModel)(yaml, nc=3, verbose=False)
    replace_blocks(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head's raw outputs of `model` on `x` (boxes, scores, mask coefficients, prototypes: every tensor of its
    output dicts but `feats`, the head's inputs, whose widths a cut changes), flattened into one."""
    with torch.no_grad():
        out = model(x)
    flat, stack = [], [out[-1]]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            flat.append(item.flatten())
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k != "feats")
    return torch.cat(flat)


@pytest.mark.parametrize("yaml", ("yolov8n.yaml", "yolo11n-seg.yaml", "yolo26n.yaml"))
def test_a_zeroed_cut_computes_what_the_pruned_model_computes(yaml):
    model = built(yaml)
    x = torch.rand(2, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = GroupPruner(model, build_importance("l2"), held_layers(model), 64)
    originals = dict(zip(pruner.names, pruner.widths()))
    seen = []
    rows = scan_sensitivity(model, pruner, originals, RATE, 1, lambda m: seen.append(outputs(m, x)) or 0.0)
    assert len(rows) == len(pruner.names) == len(seen) > 20
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} not restored after the scan"
    reference = outputs(model, x)
    changed = 0
    for i in range(0, len(rows), 7):
        copy = deepcopy(model)
        cut = GroupPruner(copy, build_importance("l2"), held_layers(copy), 64)
        widths = cut.widths()
        widths[i] = kept_width(originals[rows[i]["layer"]], RATE, 1, widths[i])
        cut.prune(widths)
        assert rows[i]["kept"] == widths[i] < originals[rows[i]["layer"]]
        pruned = outputs(copy.eval(), x)
        torch.testing.assert_close(seen[i], pruned, rtol=0, atol=1e-5, msg=lambda m: f"{rows[i]['layer']}: {m}")
        changed += float((pruned - reference).abs().max()) > 1e-3  # deep layers of an untrained model barely reach it
    assert changed >= 4, "the cuts compared must change what the model computes, or the test proves nothing"


def test_drops_below_the_noise_floor_count_alike(tmp_path):
    """Loss rises far below `NOISE_FLOOR` of the unpruned loss are noise: those layers get the same ratio, and a
    layer whose cut raises the loss a hundred times the floor keeps almost everything."""
    base = 100.0
    floor = NOISE_FLOOR * base
    losses = [base + 0.001 * floor, base + 0.01 * floor, base, base + 100 * floor]
    rows = [{"layer": f"l{i}", "channels": 64, "kept": 32, "loss": loss} for i, loss in enumerate(losses)]
    ratios = sensitivity_ratios(tmp_path / "sensitivity.csv", RATE, lambda: (base, rows))
    first, second, unchanged, sensitive = ratios.values()
    assert first == pytest.approx(unchanged, rel=0.02) and second == pytest.approx(unchanged, rel=0.02)
    assert sensitive < 0.02 * unchanged
    assert sum(ratios.values()) == pytest.approx(RATE * len(rows))


def test_the_scan_measures_fewer_images_as_the_model_grows_within_its_bounds():
    layers = 59  # YOLOv8n's prunable groups
    small = count_macs_params(DetectionModel("yolov8n.yaml", nc=3, verbose=False), 320)[0]
    assert scan_images(small, layers, "cpu") == SENSITIVITY_IMAGES, "YOLOv8n at 320 px is scanned on every image"
    large = count_macs_params(DetectionModel("yolov8n.yaml", nc=3, verbose=False), 640)[0]
    assert MIN_SCAN_IMAGES < scan_images(large, layers, "cpu") < SENSITIVITY_IMAGES
    assert 2 * layers * large * scan_images(large, layers, "cpu") <= FORWARD_MACS["cpu"], "within the CPU's budget"
    assert scan_images(1e12, layers, "cpu") == MIN_SCAN_IMAGES, "never fewer than the floor"
    assert scan_images(large, layers, "cuda") == SENSITIVITY_IMAGES, "a GPU affords the whole scan"
