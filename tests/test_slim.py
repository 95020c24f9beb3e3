"""Tests for Network Slimming (`ultralytics_prune.recipes.slim`): selection, the lossless fold and the `yolo slim` run. CPU."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER
from ultralytics_prune.patches.blocks import C2f_v2, replace_blocks

from ultralytics_prune import YOLOPrune
from ultralytics_prune.channels.graph import raw_head_outputs
from ultralytics_prune.channels.slim_select import keep_count, select_channels
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.report import inference_outputs
from ultralytics_prune.recipes.slim import slim_model

IMGSZ = 64


def twin_model(cfg: str, seed: int = 0, low: float = 0.5) -> nn.Module:
    """A fresh detection model with block twins and random BatchNorm statistics (gammas in [low, low + 1))."""
    model = DetectionModel(cfg, nc=3, verbose=False)
    replace_blocks(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + low)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)  # beta != 0: a dead channel still outputs act(beta)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Decoded predictions plus every raw head tensor, eval mode."""
    model.eval()
    return [*inference_outputs(model(x)), *raw_head_outputs(model, x)]


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b))


def kill(bn: nn.BatchNorm2d, idxs: list[int]) -> None:
    """Set gamma (only gamma) of channels `idxs` to exactly 0."""
    with torch.no_grad():
        bn.weight[idxs] = 0.0


# --------------------------------------------------------------------------------------------------------- selection
def test_keep_count():
    assert keep_count(16, 4, 1, 1) == 12
    assert keep_count(16, 16, 1, 1) == 1  # never empty
    assert keep_count(16, 16, 4, 1) == 4
    assert keep_count(16, 5, 1, 8) == 16  # 11 kept -> rounded up to 16
    assert keep_count(16, 15, 1, 8) == 8
    assert keep_count(12, 12, 1, 8) == 8
    assert keep_count(6, 6, 1, 8) == 6  # capped at the layer size
    assert keep_count(3, 0, 8, 1) == 3  # min_channels larger than the layer keeps it whole


def test_select_channels_rate_threshold_and_clamp():
    scores = [torch.tensor([0.5, 0.01, 0.3, 0.02]), torch.tensor([0.001, 0.002, 0.9, float("inf")])]
    sel, info = select_channels(scores, rate=3 / 7)  # 7 finite channels, 3 lowest go: 0.001, 0.002, 0.01
    assert sel == [[1], [0, 1]] and info["total"] == 7 and info["removed"] == 3 and not info["clamped"]
    assert info["threshold"] == pytest.approx(0.01)
    sel, info = select_channels(scores, threshold=0.05)
    assert sel == [[1, 3], [0, 1]] and info["threshold"] == 0.05
    sel, info = select_channels(scores, rate=0.999, min_channels=1)
    assert info["clamped"] and sel == [[1, 2, 3], [0, 1, 2]]  # 0.5 and the inf channel stay
    assert info["requested"] == 7 and info["removed"] == 6
    sel, info = select_channels(scores, threshold=0.05, min_channels=3)
    assert sel == [[1], [0]] and info["clamped"]  # lowest score first
    sel, info = select_channels(scores, rate=0.0)
    assert sel == [[], []] and info["removed"] == 0 and info["threshold"] == 0.0


# ---------------------------------------------------------------------------------------------------------- the fold
def test_dead_channels_with_1x1_consumers_are_removed_losslessly():
    model = twin_model("yolov8n.yaml")
    # C2f_v2.cv0 feeds only the concat into cv2, a 1x1 conv: the fold is exact
    killed = {"model.2": [1, 3, 5], "model.6": [0, 7], "model.15": [2, 4, 8, 9]}
    blocks = dict(model.named_modules())
    for name, idxs in killed.items():
        assert isinstance(blocks[name], C2f_v2)
        kill(blocks[name].cv0.bn, idxs)
    before = {name: (blocks[name].cv0.conv.out_channels, blocks[name].cv2.conv.in_channels) for name in killed}
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    reference = outputs(model, x)

    halves = slim_model(copy.deepcopy(model), threshold=1e-8, min_channels=1, round_to=1, imgsz=IMGSZ)
    assert halves.removed == 0, "one half dead, the other alive: Ultralytics' C2f needs equal halves, none go"
    report = slim_model(model, threshold=1e-8, min_channels=1, round_to=1, imgsz=IMGSZ, equal_halves=False)

    n = sum(len(v) for v in killed.values())
    assert report.removed == report.requested == n and not report.clamped
    assert report.folded == n and report.unfolded == 0
    assert report.ratio == pytest.approx(n / report.total)
    for name, idxs in killed.items():
        out0, in0 = before[name]
        assert blocks[name].cv0.conv.out_channels == blocks[name].cv0.bn.num_features == out0 - len(idxs)
        assert blocks[name].cv2.conv.in_channels == in0 - len(idxs)
        assert float(blocks[name].cv0.bn.weight.detach().abs().min()) > 0.4  # exactly the zeroed ones went
    assert report.fold_error < 1e-5
    assert max_rel_diff(outputs(model, x), reference) < 1e-4
    rows = {r["name"]: r for r in report.layers}
    assert rows["model.2.cv0.bn"]["removed"] == 3 and rows["model.2.cv1.bn"]["removed"] == 0


def test_fold_is_needed_and_kxk_error_is_only_the_padded_border():
    base = twin_model("yolov8n.yaml", seed=2)
    blocks = dict(base.named_modules())
    # Bottleneck cv1 of model.2 feeds only the 3x3 m.0.cv2; cv0 of model.4 feeds the 1x1 cv2
    kill(blocks["model.2.m.0.cv1.bn"], [0, 2, 4])
    kill(blocks["model.4.cv0.bn"], [1, 6])
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    reference = outputs(base, x)

    folded, unfolded, replicate = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    r_fold = slim_model(folded, threshold=1e-8, round_to=1, imgsz=IMGSZ, equal_halves=False)
    r_none = slim_model(unfolded, threshold=1e-8, round_to=1, imgsz=IMGSZ, fold=False, equal_halves=False)
    assert r_fold.removed == r_none.removed == 5 and r_none.folded == 0 and r_none.unfolded == 5
    err_fold, err_none = max_rel_diff(outputs(folded, x), reference), max_rel_diff(outputs(unfolded, x), reference)
    assert err_fold < err_none / 3, (err_fold, err_none)
    # with replicate padding a constant map stays constant at the border too: the kxk fold becomes exact
    for m in replicate.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "replicate"
    reference = outputs(replicate, x)
    r_rep = slim_model(replicate, threshold=1e-8, round_to=1, imgsz=IMGSZ, equal_halves=False)
    assert r_rep.removed == 5 and r_rep.fold_error < 1e-5
    assert max_rel_diff(outputs(replicate, x), reference) < 1e-4


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_slim_rate(cfg):
    model = twin_model(cfg, low=0.01)
    report = slim_model(model, rate=0.3, min_channels=1, round_to=1, imgsz=IMGSZ)
    assert report.total > 0 and report.ratio == pytest.approx(0.3, abs=0.01) and not report.clamped
    assert report.unfolded == 0 and report.fold_error < 0.05
    kept = [r for r in report.layers if r["prunable"]]
    assert all(r["channels_after"] >= 1 for r in kept) and any(r["removed"] for r in kept)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    assert all(torch.isfinite(t).all() for t in outputs(model, x))
    assert report.hist_before.sum() - report.hist_after.sum() == sum(r["removed"] for r in kept)


def test_hold_keeps_a_layer_whole():
    model = twin_model("yolov8n.yaml", low=0.01)
    held = model.model[2].cv0.conv
    report = slim_model(model, rate=0.5, round_to=1, imgsz=IMGSZ, hold=[held])
    rows = {r["name"]: r for r in report.layers}
    assert held.out_channels == 16 and not rows["model.2.cv0.bn"]["prunable"]
    assert rows["model.2.cv0.bn"]["removed"] == 0 and report.removed > 0


def test_rate_near_one_keeps_a_channel_everywhere_and_warns():
    model = twin_model("yolov8n.yaml")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        report = slim_model(model, rate=0.999, min_channels=1, round_to=1, imgsz=IMGSZ)
    finally:
        LOGGER.removeHandler(handler)
    assert report.clamped and report.removed < report.requested
    prunable = [r for r in report.layers if r["prunable"]]
    assert prunable and all(r["channels_after"] >= 1 for r in prunable)
    assert any(r["channels_after"] == 1 for r in prunable)
    assert sum("min_channels" in m and "removed" in m for m in messages) == 1
    outputs(model, torch.rand(1, 3, IMGSZ, IMGSZ))  # still runs


# ------------------------------------------------------------------------------------------------- the yolo slim run
def test_network_slimmer_end_to_end(synthetic_data, runs_dir):
    YOLOPrune("yolov8n.yaml").train(
        data=str(synthetic_data), epochs=2, imgsz=IMGSZ, batch=8, nbs=8, warmup_epochs=0, lr0=0.1, optimizer="SGD",
        sr=0.1, workers=0, val=False, plots=False, project=str(runs_dir), name="slim_sparse", exist_ok=True,
    )  # fmt: skip
    last = runs_dir / "slim_sparse" / "weights" / "last.pt"
    assert last.exists()
    slimmed = YOLOPrune(str(last)).slim(
        data=str(synthetic_data), rate=0.3, epochs=1, imgsz=IMGSZ, batch=8, workers=0,
        project=str(runs_dir / "slim"), name="e2e", exist_ok=True, plots=False,
    )  # fmt: skip
    final = Path(slimmed.ckpt_path)
    run = runs_dir / "slim" / "e2e"
    assert final == run / "weights" / "slimmed.pt"
    for name in ("slim_results.csv", "slim_layers.csv", "gamma_before_after.png", "weights/slimmed.pt",
                 "weights/slimmed.onnx", "onnx_check.json", "slim_results.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert json.loads((run / "onnx_check.json").read_text())["match"] is True
    rows = read_csv(run / "slim_results.csv")
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert rows[-1]["macs_G"] < rows[0]["macs_G"] and rows[-1]["params_M"] < rows[0]["params_M"]
    assert 0.2 < rows[-1]["ratio"] <= 0.3 + 1e-6  # round_to=8 rounds kept counts up
    layers = read_csv(run / "slim_layers.csv")
    assert {"name", "channels_before", "channels_after", "threshold"} <= set(layers[0])
    assert sum(r["channels_before"] - r["channels_after"] for r in layers) > 0
    assert (run / "step1" / "weights" / "step.pt").is_file() and (run / "step1" / "results.csv").is_file()
    assert slimmed.model.yaml["pruned"]["method"] == "slim"
