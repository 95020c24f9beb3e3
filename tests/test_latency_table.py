"""The per-layer latency table and `latency_aware=True` (channels ranked by importance per millisecond)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.patches.dfl import replace_dfl

from ultralytics_prune import pruner as pruner_module
from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.graph import held_layers
from ultralytics_prune.group_pruner import GroupPruner, build_importance
from ultralytics_prune.latency_table import LatencyTable, channel_costs
from ultralytics_prune.pruner import DepGraphPruner
from ultralytics_prune.report import read_csv

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


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_table_times_every_layer(backend, tmp_path):
    """Every convolution gets a time on both CPU backends, the layers add up to less than the whole, the CSV reads
    back to the same table."""
    model = twin_model()
    table = LatencyTable.measure(model, 64, backend)
    assert set(table.layers) == conv_names(model)
    assert all(ms > 0 for ms, _ in table.layers.values())
    assert sum(ms for ms, _ in table.layers.values()) <= table.total_ms and table.fixed_ms >= 0
    assert table.layers["model.0.conv"][1] == model.model[0].conv.weight.numel()
    again = LatencyTable.load(table.save(tmp_path / "table.csv"))
    assert set(again.layers) == set(table.layers) and again.total_ms == pytest.approx(table.total_ms, rel=1e-5)
    rows = read_csv(tmp_path / "table.csv")
    assert [r["layer"] for r in rows[-2:]] == ["(fixed)", "(total)"]
    assert [r["ms"] for r in rows[:-2]] == sorted((r["ms"] for r in rows[:-2]), reverse=True)


def test_channel_cost_is_each_layers_time_per_channel_on_the_side_cut():
    """With 1 ms per layer, the stem's group costs 1/16 (its 16 outputs) + 1/16 (the next layer's 16 inputs) per
    channel; after that next layer loses half its outputs, its time and so the stem's cost follow its weights."""
    model = twin_model()
    table = LatencyTable({n: (1.0, m.weight.numel()) for n, m in model.named_modules() if n in conv_names(model)}, 50.0)
    held = held_layers(model)
    pruner = GroupPruner(model, build_importance("l2"), held, 64)
    stem = pruner.names.index("model.0.conv")
    assert channel_costs(table, model, pruner.graph, pruner.groups)[stem] == pytest.approx(1 / 16 + 1 / 16)
    widths = [w if n != "model.1.conv" else w // 2 for n, w in zip(pruner.names, pruner.widths())]
    pruner.prune(widths)
    pruner = GroupPruner(model, build_importance("l2"), held, 64)
    assert table.layer_ms("model.1.conv", model.model[1].conv) == pytest.approx(0.5)
    costs = channel_costs(table, model, pruner.graph, pruner.groups)
    assert costs[pruner.names.index("model.0.conv")] == pytest.approx(1 / 16 + 0.5 / 16)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False),
                           tmp_path_factory.mktemp("latency-aware") / "v8n.pt")  # fmt: skip


def test_latency_aware_cuts_the_slow_layers(untrained, synthetic_data, tmp_path, monkeypatch):
    """A table where one layer is 100x slower per weight: that layer loses the most it may (it keeps half of what a
    uniform cut leaves), the others less, the share of channels removed is `rate`; the table is written once."""
    slow = "model.2.cv2.conv"
    measured = []

    def fake_measure(model, imgsz, backend):
        measured.append(backend)
        convs = {n: m for n, m in model.named_modules() if n in conv_names(model)}
        return LatencyTable({n: ((100.0 if n == slow else 1.0), m.weight.numel()) for n, m in convs.items()}, 500.0)

    monkeypatch.setattr(pruner_module.LatencyTable, "measure", staticmethod(fake_measure))
    args = get_prune_cfg(overrides={**recipe_overrides({**FAST, "rate": 0.4, "latency_aware": True,
                                                        "iterative_steps": 1, "latency_backend": "torch",
                                                        "plots": True}),
                                    "model": str(untrained), "data": str(synthetic_data), "project": str(tmp_path),
                                    "mode": "prune"})  # fmt: skip
    final = DepGraphPruner(args)()
    assert measured == ["torch"]
    assert (final.parent.parent / "latency_table.csv").is_file()
    assert (final.parent.parent / "latency_table.png").read_bytes()[:4] == b"\x89PNG"
    before, after = dict(load_model(untrained).named_modules()), dict(load_model(final).named_modules())
    kept = {n: after[n].out_channels / before[n].out_channels for n in ("model.2.cv2.conv", "model.5.conv")}
    assert kept[slow] == pytest.approx(0.5 * (1 - 0.4), abs=0.07), "the slow layer goes down to its floor"
    assert kept["model.5.conv"] > kept[slow]
    rows = read_csv(final.parent.parent / "prune_results.csv")
    assert rows[1]["removed"] == pytest.approx(0.4, abs=0.03)
