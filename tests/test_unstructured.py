"""`method=unstructured`: the globally smallest convolution weights go to zero, stay zero, and buy no dense speed."""

from __future__ import annotations

import logging

import torch
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.checkpoint import load_model, pruned_info, save_checkpoint
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.report import count_macs_params
from ultralytics_prune.model import run_recipe
from ultralytics_prune.recipes.weight_sparsity import (
    conv_weights,
    hold_zero_weights,
    prune_smallest_weights,
    zero_share,
)


def test_global_magnitude_ranks_across_layers():
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    dfl = next(m for m in model.modules() if isinstance(m, DFL)).conv.weight.clone()
    macs, params = count_macs_params(model, 64)
    before = torch.cat([w.detach().abs().flatten() for w in conv_weights(model)])
    assert prune_smallest_weights(model, 0.5) == zero_share(model)
    assert abs(zero_share(model) - 0.5) < 1e-4
    zeroed = torch.cat([w.detach().flatten() for w in conv_weights(model)]) == 0
    assert before[zeroed].max() <= before[~zeroed].min(), "the globally smallest must go, whatever their layer"
    assert torch.equal(next(m for m in model.modules() if isinstance(m, DFL)).conv.weight, dfl)
    assert count_macs_params(model, 64) == (macs, params), "unstructured pruning changes no shape"
    layer_shares = [float((w == 0).float().mean()) for w in conv_weights(model)]
    assert max(layer_shares) - min(layer_shares) > 0.2, "one global ranking gives layers different sparsity"


def test_zeros_stay_zero_through_training_steps():
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    prune_smallest_weights(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    hold_zero_weights(optimizer, model)
    zeros = [w.detach() == 0 for w in conv_weights(model)]
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert all(bool((w[z] == 0).all()) for w, z in zip(conv_weights(model), zeros))
    assert all(bool((w[~z] != 0).any()) for w, z in zip(conv_weights(model), zeros) if (~z).any()), "others train"


def test_unstructured_end_to_end(synthetic_data, tmp_path, logged):
    """rate=0.5: >= 45 % of the convolution weights are zero after fine-tuning, parameters and MACs unchanged, and the
    log says there is no dense speed-up."""
    ckpt = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), tmp_path / "base.pt")
    with logged(logging.WARNING) as lines:
        final = run_recipe("prune", {"model": str(ckpt), "data": str(synthetic_data), "imgsz": 64, "batch": 16,
                                     "workers": 0, "method": "unstructured", "rate": 0.5, "iterative_steps": 1,
                                     "epochs": 1, "project": str(tmp_path / "runs"), "plots": False})  # fmt: skip
    model = load_model(final)
    assert zero_share(model) >= 0.45 and pruned_info(model)["method"] == "unstructured"
    rows = read_csv(final.parent.parent / "prune_results.csv")
    assert rows[-1]["macs_G"] == rows[0]["macs_G"] and rows[-1]["params_M"] == rows[0]["params_M"]
    assert rows[-1]["sparsity"] >= 0.45 and "dense_speedup" in rows[-1]
    said = [line for line in lines if "method=unstructured" in line]
    assert len(said) == 1 and "Dense runtimes" in said[0] and "sparse kernels" in said[0], lines
