"""Cuts that do not damage: sparse training toward the cut (`sparse_epochs`, `sparse_reg`), `importance=hessian` and
least-squares reconstruction of the layers a cut feeds less (`reconstruct`).

CPU only: yolov8n built from yaml (untrained, saved as a checkpoint) on the synthetic 64 px set of conftest.py.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune import UserError
from ultralytics_prune.cfg import (
    IMPORTANCES,
    PRUNE_DEFAULTS,
    SPARSE_SHARE,
    get_prune_cfg,
    recipe_overrides,
    ultralytics_args,
)
from ultralytics_prune.channels.calibrate import squared_gradients
from ultralytics_prune.channels.graph import held_layers
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance, channel_masks
from ultralytics_prune.channels.reconstruct import (
    MIN_REBUILD_IMAGES,
    REBUILD_IMAGES,
    ChannelLedger,
    rebuild_images,
    reconstruct_consumers,
)
from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.recipes.depgraph import DepGraphPruner
from ultralytics_prune.recipes.group_sparsity import GroupSparsity, masked_norm, masks_as_saved

FAST = dict(imgsz=64, batch=16, workers=0, plots=False, exist_ok=True, device="cpu", onnx=False, max_map_drop=1.0,
            sensitivity=False)


def yolov8n() -> DetectionModel:
    """Untrained yolov8n for the 3 classes of the synthetic set, block twins swapped in (as a run prunes it)."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    replace_blocks(model)
    return model


def half_cut(model: DetectionModel) -> tuple[GroupPruner, list[list[int]]]:
    """The l2 pruner of `model` and the channels it removes to keep half of every group."""
    pruner = GroupPruner(model, build_importance("l2"), held_layers(model), 64)
    return pruner, pruner.choose([w // 2 for w in pruner.widths()])


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """An untrained yolov8n saved as a checkpoint (the run's input)."""
    return save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), tmp_path_factory.mktemp("p") / "v8n.pt")


def run_prune(data: Path, model: Path, project: Path, **kw) -> Path:
    """`yolo prune` as the CLI makes it; returns the run folder."""
    overrides = {"data": str(data), "model": str(model), "project": str(project), "name": "exp", **FAST, **kw}
    run = DepGraphPruner(get_prune_cfg(overrides={**recipe_overrides(overrides), "mode": "prune"}))
    run()
    return run.save_dir


def read_csv_rows(file: Path) -> list[dict]:
    with open(file, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------------
# the penalty


def test_shrink_touches_only_removed_channels():
    """The hook shrinks what a cut removes (root rows, BatchNorm weight and bias, consumers' input columns) by the
    epoch's factor and leaves every other weight bit for bit; an epoch's steps together take its share away."""
    model = yolov8n()
    pruner, cuts = half_cut(model)
    masks = channel_masks(model, pruner.touched(cuts))
    root = pruner.groups[0][0].dep.target.module
    root_name = next(n for n, m in model.named_modules() if m is root)
    rows = masks[f"{root_name}.weight"].flatten(1).amin(1)  # whole rows: output channels (columns: its inputs)
    assert rows.nonzero().flatten().tolist() == sorted(cuts[0])  # exactly the chosen rows of the root
    bn_name = root_name.removesuffix(".conv") + ".bn"
    assert masks[f"{bn_name}.weight"].tolist() == masks[f"{bn_name}.bias"].tolist() == rows.tolist()
    columns = [m for n, m in masks.items() if m.dim() == 4 and m.amax((0, 2, 3)).sum() < m.shape[1]
               and m.amax((1, 2, 3)).all()]  # fmt: skip
    assert columns, "no consumer's input columns are shrunk"

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    penalty = GroupSparsity(masks, reg=0.9)
    penalty.bind(model)
    penalty.grow(epoch=0, epochs=2, steps=3)  # half strength in the first of two epochs: 45 % over its 3 steps
    assert penalty.keep**3 == pytest.approx(1 - 0.45)
    for _ in range(3):
        penalty.shrink()
    for name, p in model.named_parameters():
        mask = masks.get(name, torch.zeros_like(p))
        assert torch.equal(p[mask == 0], before[name][mask == 0]), f"{name}: a kept channel's weight changed"
        assert torch.allclose(p[mask == 1], before[name][mask == 1] * 0.55, atol=1e-7), name
    assert masked_norm(model, masks) == pytest.approx(0.55 * masked_norm_of(before, masks), rel=1e-5)
    penalty.grow(epoch=1, epochs=2, steps=3)
    assert penalty.keep**3 == pytest.approx(1 - 0.9)


def masked_norm_of(params: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> float:
    return sum(float((params[n] * m).pow(2).sum()) for n, m in masks.items()) ** 0.5


def test_masks_follow_the_checkpoint_the_trainer_loads(tmp_path):
    """The trainer trains what `save_checkpoint` wrote (which may hold other modules than the run's twins): the
    masks renamed for it cover the same parameter entries and the same norm."""
    model = yolov8n()
    pruner, cuts = half_cut(model)
    masks = channel_masks(model, pruner.touched(cuts))
    saved = masks_as_saved(model, masks)
    loaded = load_model(save_checkpoint(model, tmp_path / "start.pt"))
    params = dict(loaded.named_parameters())
    assert all(saved[n].shape == params[n].shape for n in saved)
    assert sum(float(m.sum()) for m in saved.values()) == sum(float(m.sum()) for m in masks.values())
    assert masked_norm(loaded, saved) == pytest.approx(masked_norm(model, masks), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("distill", [{}, {"distill": True, "distill_loss": "feature"}], ids=["plain", "feature-kd"])
def test_sparse_epochs_end_to_end(synthetic_data, parent, tmp_path, distill):
    """`yolo prune sparse_epochs=2 epochs=1`: the removed channels' norm shrank before the cut (CSV `sparse_left`);
    also when Ultralytics' feature distillation wraps the student (its parameters then carry a prefix)."""
    run = run_prune(synthetic_data, parent, tmp_path, rate=0.25, iterative_steps=1, epochs=1, sparse_epochs=2,
                    nbs=16, **distill)  # fmt: skip
    rows = read_csv_rows(run / "prune_results.csv")
    assert math.isnan(float(rows[0]["sparse_left"]))  # the unpruned row: no cut
    left = float(rows[1]["sparse_left"])
    assert 0 <= left < 0.3, left  # the shrink alone leaves (1 - 0.45) * (1 - 0.9) = 5.5 %; the loss pulls back a little
    assert math.isfinite(float(rows[1]["sparse_shock"])), "the sparse epochs' fall is recorded"
    assert (run / "step1" / "sparse" / "weights" / "best.pt").is_file()
    assert float(rows[1]["removed"]) > 0.15


def test_hessian_end_to_end(synthetic_data, parent, tmp_path):
    """`importance=hessian` prunes: its criterion reads mean squared per-image gradients, and the run cuts."""
    model = yolov8n()
    args = ultralytics_args(get_prune_cfg(overrides={"data": str(synthetic_data), **FAST}))
    squared_gradients(model, args, images=4)
    assert all(p.grad is None or (p.grad >= 0).all() for p in model.parameters())
    scores = GroupPruner(model, build_importance("hessian"), held_layers(model), 64).scores
    assert scores and all(torch.isfinite(s).all() for s in scores) and any(s.max() > 0 for s in scores)

    run = run_prune(synthetic_data, parent, tmp_path, rate=0.25, iterative_steps=1, epochs=0, importance="hessian")
    rows = read_csv_rows(run / "prune_results.csv")
    assert float(rows[1]["removed"]) > 0.15 and float(rows[1]["macs_G"]) < float(rows[0]["macs_G"])


# ---------------------------------------------------------------------------------------------------------------------
# reconstruct


def cut_in_half(model: DetectionModel) -> tuple[DetectionModel, ChannelLedger]:
    """Cut every group of `model` to half its width with a ledger; a copy of the model before, and the ledger."""
    reference, ledger = deepcopy(model), ChannelLedger()
    pruner = GroupPruner(model, build_importance("l2"), held_layers(model), 64, ledger=ledger)
    pruner.remove(pruner.choose([w // 2 for w in pruner.widths()]))
    return reference, ledger


def test_ledger_knows_the_original_channels_of_every_cut_layer():
    """What the ledger says each convolution keeps is exactly the slice of the model before the cut that remains."""
    model = yolov8n()
    reference, ledger = cut_in_half(model)
    before = dict(reference.named_modules())
    names = {m: n for n, m in model.named_modules()}
    fed_less = 0
    for layer, (keep_out, keep_in) in ledger.kept.items():
        old = before[names[layer]]
        assert torch.equal(layer.weight, old.weight[keep_out][:, keep_in])
        fed_less += len(keep_in) < old.in_channels
    assert fed_less > 20
    watched = dict(ledger.reference.named_modules())  # the model as it was before the first removal
    assert all(torch.equal(watched[n].weight, m.weight) for n, m in before.items() if isinstance(m, nn.Conv2d))


def test_reconstruction_recovers_a_removed_copy():
    """A removed input channel that copies a kept one is taken over exactly: the consumer's output is the same."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        reference[0].weight[6:] = reference[0].weight[:2]  # channels 6 and 7 are copies of 0 and 1
    model, ledger = deepcopy(reference), ChannelLedger()
    ledger.record(model[0], True, [6, 7])
    ledger.record(model[1], False, [6, 7])
    with torch.no_grad():
        model[0].weight = nn.Parameter(model[0].weight[:6].clone())
        model[1].weight = nn.Parameter(model[1].weight[:, :6].clone())
    model[0].out_channels = model[1].in_channels = 6
    images = [torch.rand(4, 3, 16, 16) for _ in range(4)]
    x = torch.rand(2, 3, 16, 16)
    assert (model(x) - reference(x)).abs().max() > 1e-2

    (name, before, after), = reconstruct_consumers(reference, model, ledger, images, ridge=1e-9)
    assert name == "1" and before > 1e-3 and after < 1e-5 * before  # float32 rounding: 3e-7 of 0.12 on some CPUs
    torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)


def test_reconstruction_lowers_the_output_error_of_every_consumer():
    model = yolov8n()
    reference, ledger = cut_in_half(model)
    kept = deepcopy(reference.state_dict())
    torch.manual_seed(1)
    errors = reconstruct_consumers(reference, model, ledger, [torch.rand(8, 3, 64, 64) for _ in range(4)])
    assert len(errors) > 20
    assert all(after <= before for _, before, after in errors)
    assert sum(after for *_, after in errors) < 0.8 * sum(before for _, before, _ in errors)
    assert all(torch.equal(v, kept[k]) for k, v in reference.state_dict().items())  # the reference is left alone


def test_reconstruct_end_to_end(synthetic_data, parent, tmp_path, logged):
    with logged(logging.INFO) as lines:
        run = run_prune(synthetic_data, parent, tmp_path, rate=0.25, iterative_steps=1, epochs=0, reconstruct=16)
    rebuilt = [re.search(r"(\d+) layers the cut fed less rebuilt on 16 training images", line) for line in lines]
    assert [int(m[1]) for m in rebuilt if m][0] > 20
    rows = read_csv_rows(run / "prune_results.csv")
    assert float(rows[1]["removed"]) > 0.15 and math.isfinite(float(rows[1]["mAP50-95_pre"]))


# ---------------------------------------------------------------------------------------------------------------------
# keys


def test_keys_and_their_mistakes():
    assert "hessian" in IMPORTANCES
    assert PRUNE_DEFAULTS["sparse_epochs"] == 0 and 0 < PRUNE_DEFAULTS["sparse_reg"] <= 1
    assert PRUNE_DEFAULTS["reconstruct"] == -1


@pytest.mark.parametrize(("keys", "reconstruct"), [
    ({"mode": "prune", "epochs": 40}, -1),
    ({"mode": "prune", "epochs": 40, "sparse_epochs": -1}, 0),
    ({"mode": "prune", "epochs": 2}, -1),
    ({"mode": "prune", "epochs": 0}, -1),
    ({"mode": "prune", "epochs": 40, "sparse_epochs": 0}, -1),
    ({"mode": "prune", "epochs": 40, "reconstruct": 64}, 64),
    ({"mode": "prune", "epochs": 2, "method": "unstructured"}, 0),
    ({"mode": "slim", "epochs": 2}, 0),
])  # fmt: skip
def test_reconstruct_repairs_the_cuts_no_sparse_epochs_prepared(keys, reconstruct):
    """`reconstruct=-1` stays on (the run picks the images) where a structured prune runs no sparse epochs, and is off
    where it does or elsewhere; a number the user gives is kept."""
    assert get_prune_cfg(overrides=recipe_overrides(keys)).reconstruct == reconstruct


def test_rebuild_images_within_the_budget():
    assert rebuild_images(0.163e9, 49, "cpu") == REBUILD_IMAGES  # YOLOv8n at 128 px
    assert MIN_REBUILD_IMAGES < rebuild_images(4.1e9, 49, "cpu") < REBUILD_IMAGES  # at 640 px
    assert rebuild_images(258e9, 100, "cpu") == MIN_REBUILD_IMAGES  # yolov8x at 640 px
    assert rebuild_images(4.1e9, 49, "cuda") == REBUILD_IMAGES
    for bad in ({"sparse_epochs": -2}, {"sparse_epochs": 1.5}, {"sparse_reg": 0}, {"sparse_reg": 1.5},
                {"importance": "obd"},
                {"sparse_epochs": 2, "method": "unstructured"}, {"sparse_epochs": 2, "device": "0,1"},
                {"distill_loss": "response", "distill": True, "sparse_epochs": 0, "device": [0, 1]}):  # fmt: skip
        with pytest.raises(UserError) as e:
            get_prune_cfg(overrides={**bad, "mode": "prune"})
        assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)


@pytest.mark.parametrize(("keys", "sparse_epochs", "sensitivity"), [
    ({"mode": "prune", "epochs": 40}, 0, True),
    ({"mode": "prune", "epochs": 40, "sparse_epochs": -1}, round(40 * SPARSE_SHARE), True),
    ({"mode": "prune", "epochs": 15, "sparse_epochs": -1}, 2, True),
    ({"mode": "prune", "epochs": 1, "sparse_epochs": -1}, 0, True),
    ({"mode": "prune", "sparse_epochs": -1}, round(PRUNE_DEFAULTS["finetune_epochs"] * SPARSE_SHARE), True),
    ({"mode": "prune", "epochs": 20, "global_pruning": True, "sparse_epochs": -1}, 2, False),
    ({"mode": "prune", "epochs": 20, "latency_aware": True, "sparse_epochs": -1}, 2, False),
    ({"mode": "prune", "epochs": 20, "method": "unstructured", "sparse_epochs": -1}, 0, False),
    ({"mode": "slim", "epochs": 20}, 0, False),
    ({"mode": "train", "epochs": 20}, 0, False),
])  # fmt: skip
def test_auto_defaults_follow_the_other_keys(keys, sparse_epochs, sensitivity):
    """`sparse_epochs=-1` is a tenth of a structured prune's fine-tune epochs; `sensitivity` (on by default) gives way
    to another width policy and is off outside a structured prune, and `args.yaml` records what was resolved."""
    args = get_prune_cfg(overrides=recipe_overrides(keys))
    assert (args.sparse_epochs, args.sensitivity) == (sparse_epochs, sensitivity)
    with pytest.raises(UserError, match="choose one"):
        get_prune_cfg(overrides={"mode": "prune", "sensitivity": True, "global_pruning": True})
