"""Segment, pose and OBB: the fixed-width outputs are held, the task's metric drives the stop rule, end to end."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.nn.tasks import ClassificationModel, WorldModel
from ultralytics_prune.patches.blocks import replace_blocks

from tools.make_dataset import FLIP_IDX, KPT_SHAPE, make_synthetic_dataset
from ultralytics_prune.channels.graph import held_layers, raw_head_outputs
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.channels.widths import kept_width
from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.cli import entrypoint
from ultralytics_prune.errors import UserError
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.report import count_macs_params
from ultralytics_prune.recipes.depgraph import DepGraphPruner
from ultralytics_prune.tasks import TASKS, task_of

IMGSZ = 64
TASK_YAMLS = {
    "yolov8n-seg.yaml": "segment",
    "yolov8n-pose.yaml": "pose",
    "yolov8n-obb.yaml": "obb",
    "yolo11n-seg.yaml": "segment",
    "yolo26n-pose.yaml": "pose",
    "yolo26n-seg.yaml": "segment",
    "yolo26n-obb.yaml": "obb",
}


def shapes(out) -> list[tuple]:
    """Shapes of every tensor of a nested model output, except the backbone features Ultralytics returns too."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for k in sorted(out) if k != "feats" for s in shapes(out[k])]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in shapes(o)]
    return []


def half_width(model: torch.nn.Module) -> torch.nn.Module:
    """Prune every prunable group of `model` to half its width (block twins swapped in), in place."""
    replace_blocks(model)
    pruner = GroupPruner(model, build_importance("l1"), held_layers(model), IMGSZ)
    pruner.prune([kept_width(w, 0.5, 8, w) for w in pruner.widths()])
    return model


@pytest.mark.parametrize("name", TASK_YAMLS)
def test_held_outputs_keep_their_width(name):
    """Mask coefficients, prototypes, keypoints (and sigmas), angle, classes: the same shapes after pruning, in
    training and in eval mode; the model has less than 0.6x the MACs."""
    original, pruned = YOLO(name).model, YOLO(name).model
    assert task_of(original).name == TASK_YAMLS[name]
    half_width(pruned)
    assert count_macs_params(pruned, IMGSZ)[0] < 0.6 * count_macs_params(original, IMGSZ)[0]
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    for training in (True, False):
        original.train(training), pruned.train(training)
        with torch.no_grad():
            assert shapes(pruned(x)) == shapes(original(x)), f"training={training}"


def test_training_only_branches_are_traced():
    """YOLO26 pose's keypoint sigmas run in training only; their input follows the pruned features they read."""
    model = half_width(YOLO("yolo26n-pose.yaml").model)
    head = model.model[-1]
    for features, sigma in zip(head.cv4, head.cv4_sigma):
        assert sigma.in_channels == features[-1].conv.out_channels < 2 * sigma.in_channels
    with torch.no_grad():
        assert len(raw_head_outputs(model.eval(), torch.zeros(1, 3, IMGSZ, IMGSZ))) > 0


@pytest.mark.parametrize("model", [ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False),
                                   WorldModel("yolov8s-worldv2.yaml", nc=3, verbose=False)])  # fmt: skip
def test_other_families_refused(model, tmp_path, synthetic_data, logged):
    ckpt = save_checkpoint(model, tmp_path / "other.pt")
    before = ckpt.read_bytes()
    with pytest.raises(UserError, match=f"holds a {type(model).__name__}; ultralytics-prune prunes YOLO detect"):
        load_model(ckpt)
    with logged(logging.ERROR) as lines:
        with pytest.raises(SystemExit) as e:
            entrypoint(f"yolo prune model={ckpt} data={synthetic_data} project={tmp_path / 'p'}")
    assert e.value.code == 2 and len(lines) == 1 and type(model).__name__ in lines[0]
    assert not (tmp_path / "p").exists() and ckpt.read_bytes() == before


@pytest.mark.parametrize("task", ["segment", "pose"])
def test_task_metric_drives_the_stop_rule(task):
    """A step that keeps the box mAP but loses the task's own is stopped (and the reverse is not)."""
    run = object.__new__(DepGraphPruner)
    run.task, run.prefix, run.args = TASKS[task], "prune: ", SimpleNamespace(max_map_drop=0.05)
    own = TASKS[task].metric
    run.rows = [{"step": 0, "mAP50-95_post": 0.5, f"{own}_post": 0.5}]
    assert run.lost_too_much({"step": 1, "mAP50-95_post": 0.5, f"{own}_post": 0.3})
    assert not run.lost_too_much({"step": 1, "mAP50-95_post": 0.3, f"{own}_post": 0.49})


def test_task_datasets(tmp_path):
    """Segment outlines, pose keypoints inside their box, OBB corners of a rectangle; pose data.yaml has its shape."""
    labels = {}
    for task in ("segment", "pose", "obb"):
        data = make_synthetic_dataset(tmp_path / task, n_train=4, n_val=2, imgsz=96, task=task)
        text = (data.parent / "labels" / "train" / "train_00000.txt").read_text()
        labels[task] = [np.array(line.split()[1:], float) for line in text.splitlines()]
        info = yaml.safe_load(data.read_text())
        assert (info.get("kpt_shape"), info.get("flip_idx")) == ((KPT_SHAPE, FLIP_IDX) if task == "pose" else (None,
                                                                                                                None))
    assert all(len(v) >= 6 and len(v) % 2 == 0 for v in labels["segment"])
    for v in labels["pose"]:
        (cx, cy, w, h), kpts = v[:4], v[4:].reshape(4, 3)
        assert len(v) == 4 + 12 and (kpts[:, 2] == 2).all()
        assert (abs(kpts[:, 0] - cx) <= w / 2 + 1e-2).all() and (abs(kpts[:, 1] - cy) <= h / 2 + 1e-2).all()
    inside = [v for v in labels["obb"] if ((v > 0) & (v < 1)).all()]  # corners beyond the border are clipped
    assert inside
    for v in inside:
        corners = v.reshape(4, 2)
        sides = np.linalg.norm(corners - np.roll(corners, 1, 0), axis=1)
        assert sides[0] == pytest.approx(sides[2], abs=0.02) and sides[1] == pytest.approx(sides[3], abs=0.02)


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory) -> dict:
    """For each task: a one-epoch `yolo train sr=0.001`, `yolo prune rate=0.5` and `yolo slim rate=0.3 epochs=0`."""
    root = tmp_path_factory.mktemp("tasks")
    runs = {}
    for name, task in (("yolov8n-seg.yaml", "segment"), ("yolo26n-pose.yaml", "pose"), ("yolov8n-obb.yaml", "obb")):
        data = make_synthetic_dataset(root / f"data-{task}", n_train=16, n_val=8, imgsz=IMGSZ, task=task)
        common = f"data={data} imgsz={IMGSZ} batch=8 workers=0 exist_ok=True plots=False"
        entrypoint(f"yolo train model={name} epochs=1 sr=0.001 {common} project={root / 'train'} name={task}")
        trained = root / "train" / task / "weights" / "last.pt"
        entrypoint(f"yolo prune model={trained} rate=0.5 iterative_steps=1 epochs=1 {common} project={root} "
                   f"name=prune-{task}")  # fmt: skip
        entrypoint(f"yolo slim model={trained} rate=0.3 epochs=0 {common} project={root} name=slim-{task}")
        runs[task] = {"data": data, "trained": trained, "train": root / "train" / task,
                      "prune": root / f"prune-{task}", "slim": root / f"slim-{task}"}  # fmt: skip
    return runs


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_task_end_to_end(task_runs, task):
    """Sparsity training logs |gamma|; pruned and slimmed models keep their task, have fewer MACs, match in ONNX,
    and their CSV has the box and the task's own metric."""
    run = task_runs[task]
    assert "gamma/median" in (run["train"] / "results.csv").read_text().splitlines()[0]
    base = count_macs_params(load_model(run["trained"]), IMGSZ)[0]
    own = TASKS[task].metric
    for mode, result, share in (("prune", "pruned", 0.6), ("slim", "slimmed", 1.0)):
        model = load_model(run[mode] / "weights" / f"{result}.pt")
        assert task_of(model).name == task
        assert count_macs_params(model, IMGSZ)[0] < share * base
        rows = read_csv(run[mode] / f"{mode}_results.csv")
        assert {"mAP50-95_pre", "mAP50-95_post", f"{own}_pre", f"{own}_post"} <= set(rows[0])
        assert json.loads((run[mode] / "onnx_check.json").read_text())["match"]


def test_task_results_load_in_plain_ultralytics(task_runs):
    """A fresh process using only Ultralytics' API loads each result with its task and validates it."""
    files = {task: str(r["prune"] / "weights" / "pruned.pt") for task, r in task_runs.items()}
    data = {task: str(r["data"]) for task, r in task_runs.items()}
    script = (
        "import sys, json\nfrom ultralytics import YOLO\n"
        "files, data = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "for task, f in files.items():\n    m = YOLO(f)\n    assert m.task == task, (m.task, task)\n"
        f"    m.val(data=data[task], imgsz={IMGSZ}, batch=8, workers=0, plots=False, verbose=False)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script, json.dumps(files), json.dumps(data)], capture_output=True,
                         text=True, cwd=Path(files["segment"]).parent)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
