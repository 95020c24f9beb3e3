"""The per-layer latency table and `latency_aware=True` (channels ranked by importance per millisecond)."""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.patches.dfl import replace_dfl

from ultralytics_prune.channels.graph import held_layers
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.measure.latency_table import (
    LatencyTable,
    cache_file,
    channel_costs,
    monotone,
    read_cached,
    write_cached,
)
from ultralytics_prune.files import read_csv
from ultralytics_prune.recipes import latency_goal as latency_goal_module
from ultralytics_prune.recipes.depgraph import DepGraphPruner

FAST = dict(imgsz=64, batch=16, workers=0, plots=False, device="cpu", max_map_drop=1.0, finetune_epochs=0, onnx=False)


def twin_model(yaml: str = "yolov8n.yaml") -> nn.Module:
    torch.manual_seed(0)
    model = DetectionModel(yaml, nc=3, verbose=False)
    replace_blocks(model)
    replace_dfl(model)
    return model


def conv_names(model: nn.Module) -> set[str]:
    """Every convolution but the box decoder's fixed projection."""
    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".dfl." not in n}


def half_cut(model: nn.Module) -> nn.Module:
    """`model` with every prunable group cut to half its channels."""
    cut = deepcopy(model)
    pruner = GroupPruner(cut, build_importance("l2"), held_layers(cut), 64)
    pruner.prune([max(1, w // 2) for w in pruner.widths()])
    return cut


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_table_times_every_layer_at_every_width(backend, tmp_path):
    """Every convolution gets a time at full width and at the half cut, on both CPU backends; times never rise as
    weights fall; the layers add up to less than the whole; the CSV reads back to the same table."""
    model = twin_model()
    cut = half_cut(model)
    table = LatencyTable.measure([model, cut], 64, backend)
    assert set(table.layers) == conv_names(model)
    full, halved = model.model[1].conv.weight.numel(), cut.model[1].conv.weight.numel()
    assert [w for w, _ in table.layers["model.1.conv"]] == [halved, full]
    assert all(0 < a[1] <= b[1] for points in table.layers.values() for a, b in zip(points, points[1:]))
    assert sum(table.full_ms(n) for n in table.layers) <= table.total_ms and table.fixed_ms >= 0
    again = LatencyTable.load(table.save(tmp_path / "table.csv"))
    flat = [(n, w, pytest.approx(ms, rel=1e-5)) for n, points in sorted(table.layers.items()) for w, ms in points]
    assert [(n, w, ms) for n, points in sorted(again.layers.items()) for w, ms in points] == flat
    assert again.total_ms == pytest.approx(table.total_ms, rel=1e-5)
    rows = read_csv(tmp_path / "table.csv")
    assert [r["layer"] for r in rows[-2:]] == ["(fixed)", "(total)"]
    firsts = [r["ms"] for r in rows[:-2] if r["weights"] == max(w for w, _ in table.layers[r["layer"]])]
    assert firsts == sorted(firsts, reverse=True), "slowest layer first"


def test_monotone_averages_what_rises_as_weights_fall():
    assert monotone([1.0, 3.0, 2.0, 4.0]) == pytest.approx([1.0, 2.5, 2.5, 4.0])
    assert monotone([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert monotone([0.5, 1.0]) == [0.5, 1.0]


def test_channel_cost_is_what_one_channel_fewer_saves():
    """With one point per layer (1 ms at full width) time scales by weights: the stem's group costs 1/16 (its 16
    outputs) + 1/16 (the next layer's 16 inputs) per channel. With a measured curve, a layer whose time barely falls
    with its weights costs little per channel, however slow it is."""
    model = twin_model()
    weights = {n: m.weight.numel() for n, m in model.named_modules() if n in conv_names(model)}
    table = LatencyTable({n: [(w, 1.0)] for n, w in weights.items()}, 50.0)
    held = held_layers(model)
    pruner = GroupPruner(model, build_importance("l2"), held, 64)
    stem = pruner.names.index("model.0.conv")
    assert channel_costs(table, model, pruner.graph, pruner.groups)[stem] == pytest.approx(1 / 16 + 1 / 16)
    w1 = weights["model.1.conv"]
    flat = LatencyTable({**table.layers, "model.1.conv": [(w1 // 4, 0.9), (w1, 1.0)]}, 50.0)  # 10 % of it shrinks
    assert flat.layer_ms("model.1.conv", w1 // 2) == pytest.approx(0.9 + 0.1 * (1 / 4) / (3 / 4))
    slope = 0.1 / (w1 - w1 // 4)
    assert flat.channel_ms("model.1.conv", model.model[1].conv, 16) == pytest.approx(slope * w1 / 16)
    assert flat.layer_ms("model.1.conv", 0) == pytest.approx(0.9 - slope * (w1 // 4)), "extended below the points"
    assert channel_costs(flat, model, pruner.graph, pruner.groups)[stem] == pytest.approx(1 / 16 + slope * w1 / 16)
    widths = [w if n != "model.1.conv" else w // 2 for n, w in zip(pruner.names, pruner.widths())]
    pruner.prune(widths)
    pruner = GroupPruner(model, build_importance("l2"), held, 64)
    costs = channel_costs(table, model, pruner.graph, pruner.groups)
    assert costs[pruner.names.index("model.0.conv")] == pytest.approx(1 / 16 + 0.5 / 16), "follows the weights"


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False),
                           tmp_path_factory.mktemp("latency-aware") / "v8n.pt")  # fmt: skip


def test_latency_aware_cuts_the_slow_layers(untrained, synthetic_data, tmp_path, monkeypatch, latency_table_cache):
    """A table where one layer is 100x slower per weight: that layer loses the most it may (it keeps half of what a
    uniform cut leaves), the others less, the share of channels removed is `rate`. The table is measured once, on the
    model and its uniform cuts, written to the run and to the cache, and a second run reads it from the cache."""
    slow = "model.2.cv2.conv"
    measured = []

    def fake_measure(models, imgsz, backend):
        measured.append((backend, [m.model[1].conv.out_channels for m in models]))
        convs = {n: m for n, m in models[0].named_modules() if n in conv_names(models[0])}
        return LatencyTable({n: [(m.weight.numel(), 100.0 if n == slow else 1.0)] for n, m in convs.items()}, 500.0)

    monkeypatch.setattr(latency_goal_module.LatencyTable, "measure", staticmethod(fake_measure))
    overrides = {**recipe_overrides({**FAST, "rate": 0.4, "latency_aware": True, "iterative_steps": 1,
                                     "latency_backend": "torch", "plots": True, "round_to": 8}),
                 "model": str(untrained), "data": str(synthetic_data), "project": str(tmp_path),
                 "mode": "prune"}  # fmt: skip
    final = DepGraphPruner(get_prune_cfg(overrides=overrides))()
    assert measured == [("torch", [32, 24, 16, 8])], "the model, then every layer at 75, 50 and 25 % of its width"
    assert (final.parent.parent / "latency_table.csv").is_file()
    assert (final.parent.parent / "latency_table.png").read_bytes()[:4] == b"\x89PNG"
    before, after = dict(load_model(untrained).named_modules()), dict(load_model(final).named_modules())
    kept = {n: after[n].out_channels / before[n].out_channels for n in ("model.2.cv2.conv", "model.5.conv")}
    assert kept[slow] == pytest.approx(0.5 * (1 - 0.4), abs=0.07), "the slow layer goes down to its floor"
    assert kept["model.5.conv"] > kept[slow]
    rows = read_csv(final.parent.parent / "prune_results.csv")
    assert rows[1]["removed"] == pytest.approx(0.4, abs=0.03)

    [cached] = latency_table_cache.glob("torch-64-*.csv")
    assert read_csv(cached) == read_csv(final.parent.parent / "latency_table.csv")
    again = DepGraphPruner(get_prune_cfg(overrides={**overrides, "name": "again"}))()
    assert len(measured) == 1, "the second run of the same architecture reads the cached table"
    assert read_csv(again.parent.parent / "latency_table.csv") == read_csv(cached)
    assert load_model(again).model[2].cv2.conv.out_channels == after[slow].out_channels


def test_cache_key_is_the_architecture_not_the_weights():
    model = twin_model()
    same = twin_model()
    with torch.no_grad():
        same.model[0].conv.weight.mul_(2)
    assert cache_file(model, 64, "onnxruntime", 16) == cache_file(same, 64, "onnxruntime", 16)
    assert cache_file(model, 64, "onnxruntime", 16) != cache_file(model, 96, "onnxruntime", 16)
    assert cache_file(model, 64, "onnxruntime", 16) != cache_file(model, 64, "torch", 16)
    assert cache_file(model, 64, "onnxruntime", 16) != cache_file(model, 64, "onnxruntime", 8), "the sweep's rounding"
    assert cache_file(model, 64, "onnxruntime", 16) != cache_file(half_cut(model), 64, "onnxruntime", 16)


def test_a_broken_cache_is_measured_again_not_fatal(tmp_path, logged):
    """An unreadable cached table reads as none (one warning), and a cache folder that cannot be written costs only
    the cache; a good one reads back."""
    table = LatencyTable({"model.0.conv": [(216, 0.1), (432, 0.2)]}, 1.0)
    good = tmp_path / "cache" / "good.csv"
    write_cached(table, good)
    assert read_cached(good).layers == table.layers
    assert read_cached(tmp_path / "none.csv") is None
    broken = tmp_path / "broken.csv"
    broken.write_text("layer,ms\nmodel.0.conv,not a number\n")
    blocked = tmp_path / "a file" / "table.csv"
    (tmp_path / "a file").write_text("")
    with logged(logging.WARNING) as lines:
        assert read_cached(broken) is None
        write_cached(table, blocked)
    assert any("unreadable" in line and str(broken) in line for line in lines)
    assert any("not cached" in line for line in lines)
