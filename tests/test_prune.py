"""End-to-end tests of `yolo prune` (DepGraph iterative pruning): run folder, report, widths, ONNX, resume, errors.

CPU only, on the synthetic 64 px set of conftest.py. The expensive runs (training the input model, the fine-tuned
prune run) are module-scoped fixtures shared by several tests; every other run uses
`finetune_epochs=0` (no fine-tuning).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics_prune.cfg import PRUNE_DEFAULTS, get_prune_cfg, recipe_overrides
from ultralytics_prune.cfg.continuation import continuation_keys, read_parent_training

from ultralytics_prune import UserError, YOLOPrune
from ultralytics_prune.channels.graph import ATTENTION_TYPES, head_output_convs
from ultralytics_prune.checkpoint import load_model, save_checkpoint, to_plain
from ultralytics_prune.cli import entrypoint
from ultralytics_prune.recipes.depgraph import DepGraphPruner, step_ratios

CSV_COLUMNS = [
    "step",
    "ratio",
    "removed",
    "macs_G",
    "params_M",
    "latency_ms",
    "speedup",
    "mAP50_pre",
    "mAP50-95_pre",
    "mAP50_post",
    "mAP50-95_post",
    "mAP50-95_first",
    "mAP50-95_lowest",
    "shock",
]
# Keys every run of this file shares: small, CPU, no worker processes, no plots.
FAST = dict(imgsz=64, batch=16, workers=0, plots=False, exist_ok=True, device="cpu")
UNIFORM = dict(sensitivity=False)  # for tests not about widths: every layer loses `rate` (no sensitivity scan)


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_rows(file: Path) -> list[dict]:
    """prune_results.csv as a list of dicts of floats, checking the header first."""
    with open(file, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS, reader.fieldnames
        return [{k: float(v) for k, v in row.items()} for row in reader]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """The rows hold the same values (NaN equal to NaN: a row without a fine-tune has no shock)."""
    return [list(r) for r in a] == [list(r) for r in b] and all(
        x == y or (math.isnan(x) and math.isnan(y)) for ra, rb in zip(a, b) for x, y in zip(ra.values(), rb.values()))


def conv_widths(model: nn.Module) -> list[tuple[int, int]]:
    """(in_channels, out_channels) of every Conv2d of `model`, in module order."""
    return [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fixed_width_convs(model: nn.Module) -> set[int]:
    """ids of the Conv2d modules whose output width is fixed by design: head outputs (and DFL) and attention."""
    fixed = set()
    for module in [*head_output_convs(model), *(m for m in model.modules() if isinstance(m, ATTENTION_TYPES))]:
        fixed.update(id(m) for m in module.modules() if isinstance(m, nn.Conv2d))
    return fixed


def assert_rounded(model: nn.Module, round_to: int = 8) -> None:
    """Every prunable, non-depthwise Conv2d keeps a multiple of `round_to` output channels."""
    fixed = fixed_width_convs(model)
    checked, bad = 0, []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or id(m) in fixed:
            continue
        if m.groups > 1 and m.groups == m.in_channels:  # depthwise: width follows its input
            continue
        checked += 1
        if m.out_channels % round_to:
            bad.append((name, m.out_channels))
    assert checked > 20, f"only {checked} convolutions checked"
    assert not bad, f"out_channels not a multiple of {round_to}: {bad}"


def assert_macs_fell(rows: list[dict]) -> None:
    macs = [r["macs_G"] for r in rows]
    assert all(a > b for a, b in zip(macs, macs[1:])), f"MACs must fall at every step: {macs}"


@pytest.fixture
def errors(logged):
    """Messages Ultralytics' LOGGER logs at ERROR level or above during the test (it does not propagate)."""
    with logged(logging.ERROR) as records:
        yield records


def make_run(overrides: dict) -> DepGraphPruner:
    """A `DepGraphPruner` on checked args, as `yolo prune` makes it."""
    return DepGraphPruner(get_prune_cfg(overrides={**recipe_overrides(overrides), "mode": "prune"}))


def prune(data: Path, project: Path, name: str, **kw) -> tuple[DepGraphPruner, Path]:
    """Run `DepGraphPruner` with the small settings of this file; return the pruner and the final checkpoint."""
    overrides = {
        "data": str(data),
        "project": str(project),
        "name": name,
        "max_map_drop": 1.0,  # mAP on the tiny set is noise; never stop on it unless a test asks
        **FAST,
        **kw,
    }
    pruner = make_run(overrides)
    final = pruner()
    return pruner, final


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: the trained input model and the fine-tuned prune run


@pytest.fixture(scope="module")
def trained(synthetic_data, runs_dir) -> dict:
    """best.pt of yolov8n trained 3 epochs on the synthetic set, with its hash and mtime (it must never change)."""
    model = YOLOPrune("yolov8n.yaml")
    model.train(data=str(synthetic_data), epochs=3, project=str(runs_dir), name="prune_input_v8n", **FAST)
    best = Path(model.trainer.best)
    assert best.is_file()
    return {"path": best, "sha256": sha256(best), "mtime_ns": best.stat().st_mtime_ns}


def assert_untouched(trained: dict) -> None:
    path = trained["path"]
    assert sha256(path) == trained["sha256"], f"{path} was modified"
    assert path.stat().st_mtime_ns == trained["mtime_ns"], f"{path} was rewritten"


@pytest.fixture(scope="module")
def e2e(trained, synthetic_data, runs_dir) -> dict:
    """`yolo prune rate=0.5 iterative_steps=2 epochs=1` on the trained model: folder, rows, in-process model."""
    pruner, final = prune(
        synthetic_data, runs_dir, "prune_e2e", model=str(trained["path"]), rate=0.5, iterative_steps=2, epochs=1
    )
    run = runs_dir / "prune_e2e"
    return {
        "run": run,
        "final": final,
        "rows": read_rows(run / "prune_results.csv"),
        "widths": conv_widths(to_plain(deepcopy(pruner.model))),  # as saved: Ultralytics' own blocks
        "params": n_params(pruner.model),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. end to end


def test_e2e_files(e2e):
    run = e2e["run"]
    assert e2e["final"] == run / "weights" / "pruned.pt"
    for f in ("args.yaml", "prune_results.csv", "prune_results.png", "weights/pruned.pt", "weights/pruned.onnx"):
        assert (run / f).is_file(), f
    assert (run / "prune_results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for step in (1, 2):
        assert (run / f"step{step}" / "weights" / "step.pt").is_file()
        assert (run / f"step{step}" / "results.csv").is_file(), "epochs=1 fine-tunes after every step"
    assert not (run / "step3").exists()
    check = json.loads((run / "onnx_check.json").read_text())
    assert set(check) >= {"file", "max_abs_diff", "match", "onnx_ms", "shape"}
    assert check["match"] is True, check
    assert Path(check["file"]) == run / "weights" / "pruned.onnx"
    assert check["max_abs_diff"] < 1e-3 * 64 and check["onnx_ms"] > 0  # boxes are in pixels: relative to 64 px
    assert check["shape"] == [[1, 7, 84]]  # one output: 4 box + 3 classes, 8x8 + 4x4 + 2x2 anchors at 64 px


def test_e2e_csv(e2e):
    rows = e2e["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["ratio"] for r in rows] == pytest.approx([0, 0.25, 0.5]) == step_ratios(0.5, 2)
    assert_macs_fell(rows)
    ratio = rows[2]["macs_G"] / rows[0]["macs_G"]
    assert 0.15 < ratio < 0.45, f"rate=0.5 should leave ~(1-0.5)^2 of the MACs, got {ratio:.3f}"
    params = [r["params_M"] for r in rows]
    assert all(a > b for a, b in zip(params, params[1:])), params
    assert 0.15 < params[2] / params[0] < 0.45, params
    assert rows[0]["params_M"] == pytest.approx(3.011, abs=0.01)  # yolov8n, nc=3
    for r in rows:
        assert r["latency_ms"] > 0 and r["speedup"] > 0
        for k in ("mAP50_pre", "mAP50-95_pre", "mAP50_post", "mAP50-95_post"):
            assert 0 <= r[k] <= 1, (k, r)
        assert r["mAP50-95_post"] <= r["mAP50_post"] + 1e-9
    assert rows[0]["speedup"] == 1.0, "row 0 is the unpruned model; the others are timings, not bounded here"
    assert rows[0]["mAP50_pre"] == rows[0]["mAP50_post"] and rows[0]["mAP50-95_pre"] == rows[0]["mAP50-95_post"]
    assert all(math.isnan(rows[0][k]) for k in ("mAP50-95_first", "mAP50-95_lowest", "shock")), "row 0: no fine-tune"
    for r in rows[1:]:  # one fine-tune epoch: its first epoch is its lowest, and the shock is read from the cut's mAP
        assert 0 <= r["mAP50-95_first"] == r["mAP50-95_lowest"] <= 1, r
        assert r["shock"] == pytest.approx(r["mAP50-95_lowest"] - r["mAP50-95_pre"], abs=1e-5), r


def test_e2e_widths_rounded(e2e, trained):
    model = load_model(e2e["final"])
    assert conv_widths(model) == e2e["widths"], "pruned.pt must hold the in-process pruned model"
    assert n_params(model) == e2e["params"]
    assert n_params(model) == pytest.approx(e2e["rows"][-1]["params_M"] * 1e6, abs=1e3)
    assert_rounded(model, 8)
    original = load_model(trained["path"])
    assert len(conv_widths(original)) == len(e2e["widths"])
    narrower = sum(p[1] < o[1] for p, o in zip(e2e["widths"], conv_widths(original)))
    assert narrower > 30, f"only {narrower} convolutions lost channels"
    ckpt = torch.load(e2e["final"], map_location="cpu", weights_only=False)
    assert ckpt["model"].yaml["pruned"]["method"] == "prune"
    assert [r["step"] for r in ckpt["prune_results"]] == [0, 1, 2]


def test_e2e_onnx_runs_in_onnxruntime(e2e):
    import onnxruntime as ort

    session = ort.InferenceSession(str(e2e["run"] / "weights" / "pruned.onnx"), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert list(inp.shape) == [1, 3, 64, 64]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    out = session.run(None, {inp.name: x})[0]
    assert out.shape == (1, 7, 84)
    assert np.isfinite(out).all()
    # and it computes what the PyTorch model computes
    model = load_model(e2e["final"]).eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_e2e_input_unchanged(e2e, trained):
    assert_untouched(trained)


# ---------------------------------------------------------------------------------------------------------------------
# 3. a fresh process loads pruned.pt with plain Ultralytics and validates it to the CSV's numbers

VAL_SCRIPT = """
import importlib.abc, json, sys


class NotInstalled(importlib.abc.MetaPathFinder):  # plain Ultralytics: ultralytics_prune cannot be imported
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ultralytics_prune":
            raise ModuleNotFoundError(name)


sys.meta_path.insert(0, NotInstalled())
import torch
from ultralytics import YOLO
model = YOLO(sys.argv[1])
params = sum(p.numel() for p in model.model.parameters())
widths = [[m.in_channels, m.out_channels] for m in model.model.modules() if isinstance(m, torch.nn.Conv2d)]
metrics = model.val(data=sys.argv[2], imgsz=64, batch=16, workers=0, plots=False, device="cpu")
print("RESULT " + json.dumps({"map": float(metrics.box.map), "map50": float(metrics.box.map50),
                              "params": params, "widths": widths}))
"""


def test_pruned_checkpoint_validates_in_fresh_process(e2e, synthetic_data, tmp_path):
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", VAL_SCRIPT, str(e2e["final"]), str(synthetic_data)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # nothing resolves against the repository
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-3000:]
    result = json.loads(line[-1][len("RESULT ") :])
    last = e2e["rows"][-1]
    assert result["map"] == pytest.approx(last["mAP50-95_post"], abs=1e-6), "the run validates as `yolo val` does"
    assert result["map50"] == pytest.approx(last["mAP50_post"], abs=1e-6)
    assert abs(result["params"] - last["params_M"] * 1e6) <= 1e3, (result["params"], last["params_M"])
    assert [tuple(w) for w in result["widths"]] == e2e["widths"]


def test_distill_runs_and_saves_no_teacher(e2e, trained, synthetic_data, runs_dir, tmp_path):
    """`distill=True` (response distillation from the input checkpoint): the same architecture as without, the term in
    results.csv, no teacher saved, loads in plain Ultralytics."""
    _, final = prune(
        synthetic_data, runs_dir, "prune_distill", model=str(trained["path"]), rate=0.5, iterative_steps=2, epochs=1,
        distill=True, onnx=False,
    )
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    model = ckpt["model"]
    assert type(model).__name__ == "DetectionModel", type(model)
    assert not any("teacher" in k or "projector" in k for k in model.state_dict()), "teacher or projector saved"
    assert conv_widths(model) == e2e["widths"] and n_params(model) == e2e["params"], "distillation changed the widths"
    args = yaml_load_args(runs_dir / "prune_distill" / "step1" / "args.yaml")
    assert args["distill_loss"] == PRUNE_DEFAULTS["distill_loss"] == "response"
    assert args["distill_model"] is None, "response distillation keeps Ultralytics' DistillationModel out"
    results = (runs_dir / "prune_distill" / "step1" / "results.csv").read_text().splitlines()
    last = dict(zip(results[0].split(","), results[-1].split(",")))
    assert float(last["train/kd_loss"]) > 0, "the distillation term was trained on"
    parent = read_parent_training(trained["path"])
    assert parent is not None and parent.optimizer == "AdamW", "Ultralytics records what optimizer=auto chose"
    keys = continuation_keys(parent)
    assert all(args[k] == v for k, v in keys.items()), "the fine-tune goes on from the parent's training"
    proc = subprocess.run(
        [sys.executable, "-c", VAL_SCRIPT, str(final), str(synthetic_data)], capture_output=True, text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"}, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "RESULT " in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_untouched(trained)


def yaml_load_args(file: Path) -> dict:
    import yaml

    return yaml.safe_load(file.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# 4. training a pruned checkpoint keeps its widths


def assert_same_widths_as(pruned: Path, last: Path) -> None:
    ref, _ = load_checkpoint(pruned)
    got, _ = load_checkpoint(last)
    assert conv_widths(got) == conv_widths(ref), "training rebuilt the pruned model at other widths"
    assert n_params(got) == n_params(ref)


def test_yolo_train_cli_keeps_pruned_widths(e2e, synthetic_data, runs_dir):
    pruned, project = e2e["final"], runs_dir / "prune_train_cli"
    entrypoint(
        f"yolo train model={pruned} data={synthetic_data} epochs=1 imgsz=64 batch=16 workers=0 plots=False "
        f"val=False project={project} name=cli exist_ok=True"
    )
    last = project / "cli" / "weights" / "last.pt"
    assert last.is_file()
    assert_same_widths_as(pruned, last)
    # the weights were trained, not just copied
    before, after = load_checkpoint(pruned)[0].state_dict(), load_checkpoint(last)[0].state_dict()
    assert any(not torch.equal(before[k], after[k].float()) for k in before if before[k].is_floating_point())


def test_python_train_keeps_pruned_widths(e2e, synthetic_data, runs_dir):
    pruned = e2e["final"]
    model = YOLOPrune(str(pruned))
    model.train(data=str(synthetic_data), epochs=1, val=False, project=str(runs_dir), name="prune_train_py", **FAST)
    last = Path(model.trainer.last)
    assert last == runs_dir / "prune_train_py" / "weights" / "last.pt" and last.is_file()
    assert_same_widths_as(pruned, last)


def test_ddp_launcher_file_trains_the_pruned_model(e2e, synthetic_data, tmp_path):
    """The file Ultralytics' DDP launcher generates (a fresh process that rebuilds our trainer from its class, args and
    callbacks, with Ultralytics' defaults as cfg) trains the pruned model at its widths: run here with world size 1."""
    from ultralytics.utils.dist import generate_ddp_file
    from ultralytics_prune.patches.trainer import PrunedModelTrainer

    overrides = {"model": str(e2e["final"]), "data": str(synthetic_data), "epochs": 1, "val": False,
                 "project": str(tmp_path), "name": "ddp", "rate": 0.5, "hold": "22", **FAST}  # fmt: skip
    trainer = PrunedModelTrainer(overrides=overrides)
    file = Path(generate_ddp_file(trainer))
    try:
        proc = subprocess.run([sys.executable, str(file)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"})  # fmt: skip
    finally:
        file.unlink(missing_ok=True)
        file.with_suffix(".pt").unlink(missing_ok=True)
    out = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    assert "training the pruned model as loaded" in proc.stdout + proc.stderr, out
    assert_same_widths_as(e2e["final"], tmp_path / "ddp" / "weights" / "last.pt")


def test_plain_ultralytics_train_rebuilds_full_width(e2e, synthetic_data, runs_dir):
    """Why PrunedModelTrainer exists: plain Ultralytics rebuilds the model from its yaml at full width."""
    from ultralytics import YOLO

    pruned = e2e["final"]
    model = YOLO(str(pruned))
    model.train(data=str(synthetic_data), epochs=1, val=False, project=str(runs_dir), name="prune_plain", **FAST)
    plain, _ = load_checkpoint(model.trainer.last)
    assert n_params(plain) > 2 * e2e["params"], "plain Ultralytics kept the pruned widths (then the trainer is moot)"


# ---------------------------------------------------------------------------------------------------------------------
# 5. yolo11n and yolo26n (C3k2, C2PSA attention, YOLO26 end-to-end head) from a cheap untrained checkpoint


@pytest.mark.parametrize("cfg", ["yolo11n.yaml", "yolo26n.yaml"])
def test_prune_other_architectures(cfg, synthetic_data, tmp_path):
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3, verbose=False)
    train_args = {"data": str(synthetic_data), "imgsz": 64, "task": "detect"}
    ckpt = save_checkpoint(model, tmp_path / f"{Path(cfg).stem}.pt", train_args=train_args)
    loaded = load_model(ckpt)
    assert isinstance(loaded, DetectionModel) and conv_widths(loaded) == conv_widths(model)
    digest = sha256(ckpt)

    pruner, final = prune(
        synthetic_data, tmp_path, "run", model=str(ckpt), rate=0.5, iterative_steps=2, finetune_epochs=0, onnx=True,
        **UNIFORM,
    )
    run = tmp_path / "run"
    rows = read_rows(run / "prune_results.csv")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert_macs_fell(rows)
    assert rows[2]["macs_G"] < 0.75 * rows[0]["macs_G"], [r["macs_G"] for r in rows]
    check = json.loads((run / "onnx_check.json").read_text())
    assert check["match"] is True, check
    assert (run / "weights" / "pruned.onnx").is_file()
    pruned = load_model(final)
    assert conv_widths(pruned) == conv_widths(to_plain(deepcopy(pruner.model)))
    assert_rounded(pruned, 8)
    assert sha256(ckpt) == digest


# ---------------------------------------------------------------------------------------------------------------------
# 6. epochs=0: prune only


@pytest.mark.parametrize(
    "key",
    ["finetune_epochs", "epochs"],
)
def test_epochs_zero_prunes_without_finetuning(key, trained, synthetic_data, runs_dir):
    name = f"prune_ep0_{key}"
    _, final = prune(
        synthetic_data, runs_dir, name, model=str(trained["path"]), rate=0.5, iterative_steps=2, onnx=False, **{key: 0},
        **UNIFORM,
    )
    run = runs_dir / name
    rows = read_rows(run / "prune_results.csv")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert_macs_fell(rows)
    for step in (1, 2):
        assert (run / f"step{step}" / "weights" / "step.pt").is_file()
        assert not (run / f"step{step}" / "results.csv").exists(), f"{key}=0 must not train"
        assert not (run / f"step{step}" / "weights" / "last.pt").exists()
    for r in rows:
        assert r["mAP50_post"] == r["mAP50_pre"] and r["mAP50-95_post"] == r["mAP50-95_pre"]
    assert final.is_file() and not (run / "onnx_check.json").exists() and not (run / "weights" / "pruned.onnx").exists()
    assert_untouched(trained)


# ---------------------------------------------------------------------------------------------------------------------
# 7. a target in compute instead of a rate (through the CLI)


def test_speedup_target_through_cli(trained, synthetic_data, runs_dir):
    project = runs_dir / "prune_speedup"
    entrypoint(
        f"yolo prune model={trained['path']} data={synthetic_data} speedup=2 rate=0.1 iterative_steps=2 "
        f"finetune_epochs=0 onnx=False sensitivity=False max_map_drop=1.0 imgsz=64 batch=16 workers=0 plots=False project={project} "
        "name=s exist_ok=True"
    )
    rows = read_rows(project / "s" / "prune_results.csv")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert_macs_fell(rows)
    assert rows[-1]["macs_G"] <= rows[0]["macs_G"] / 2 * 1.05, [r["macs_G"] for r in rows]
    assert rows[-1]["macs_G"] >= rows[0]["macs_G"] / 2 * 0.6, "overshot the speedup target by far"
    # rate=0.1 alone would remove far less than half of the MACs: it was ignored
    assert (project / "s" / "weights" / "pruned.pt").is_file()
    assert_untouched(trained)


# ---------------------------------------------------------------------------------------------------------------------
# 8. resume after an interruption


def test_resume_after_interruption(trained, synthetic_data, runs_dir):
    _, final = prune(
        synthetic_data, runs_dir, "prune_resume", model=str(trained["path"]), rate=0.6, iterative_steps=3,
        finetune_epochs=0, onnx=False,
    )
    run = runs_dir / "prune_resume"
    csv_file = run / "prune_results.csv"
    full = read_rows(csv_file)
    assert [r["step"] for r in full] == [0, 1, 2, 3]
    # simulate an interruption right after step 1
    lines = csv_file.read_text().splitlines(keepends=True)
    csv_file.write_text("".join(lines[:3]))
    shutil.rmtree(run / "step2")
    shutil.rmtree(run / "step3")
    final.unlink()
    step1 = sha256(run / "step1" / "weights" / "step.pt")

    resumed = make_run({"resume": str(run)})()
    assert resumed == final and final.is_file()
    rows = read_rows(csv_file)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert same_rows(rows[:2], full[:2]), "the rows of finished steps must be kept as they were"
    assert [r["ratio"] for r in rows] == pytest.approx(step_ratios(0.6, 3))
    assert_macs_fell(rows)
    for i in (2, 3):  # magnitude importance is deterministic: the resumed steps prune the same channels
        assert rows[i]["macs_G"] == pytest.approx(full[i]["macs_G"], rel=1e-4)
        assert rows[i]["params_M"] == pytest.approx(full[i]["params_M"], rel=1e-4)
        assert (run / f"step{i}" / "weights" / "step.pt").is_file()
    assert sha256(run / "step1" / "weights" / "step.pt") == step1
    model = load_model(final)
    assert n_params(model) == pytest.approx(rows[-1]["params_M"] * 1e6, abs=1e3)
    siblings = [p.name for p in runs_dir.iterdir() if p.name.startswith("prune_resume") and p.name != "prune_resume"]
    assert not siblings, "resume must reuse the run folder"
    assert_untouched(trained)


def test_resume_bad_folder(tmp_path):
    with pytest.raises(UserError, match="args.yaml"):
        make_run({"resume": str(tmp_path)})


# ---------------------------------------------------------------------------------------------------------------------
# 9. max_map_drop stops the run and keeps the last good model


def scripted_validate(monkeypatch, pruner: DepGraphPruner, results: list[tuple[float, float]]) -> list:
    """Make `pruner.validate` return `results` (mAP50, mAP50-95) in order (the last repeated); return the calls."""
    calls = []

    def validate(model):
        calls.append(model)
        map50, map5095 = results[min(len(calls), len(results)) - 1]
        return {"mAP50": map50, "mAP50-95": map5095}

    monkeypatch.setattr(pruner, "validate", validate)
    return calls


def test_max_map_drop_stops_after_first_step(trained, synthetic_data, tmp_path, monkeypatch):
    pruner = make_run(
        {"model": str(trained["path"]), "data": str(synthetic_data), "project": str(tmp_path), "name": "drop",
         "rate": 0.5, "iterative_steps": 2, "finetune_epochs": 0, "onnx": False, "max_map_drop": 0.0, **FAST,
         **UNIFORM}
    )
    calls = scripted_validate(monkeypatch, pruner, [(0.5, 0.3), (0.5, 0.1)])
    final = pruner()
    run = tmp_path / "drop"
    assert len(calls) == 2, "baseline, then step 1; step 2 must not run"
    rows = read_rows(run / "prune_results.csv")
    assert [r["step"] for r in rows] == [0]
    assert rows[0]["mAP50-95_post"] == pytest.approx(0.3)
    assert not (run / "step1" / "weights" / "step.pt").exists()
    assert not (run / "step2").exists()
    original = load_model(trained["path"])
    kept = load_model(final)
    assert conv_widths(kept) == conv_widths(original)
    assert n_params(kept) == n_params(original)
    assert_untouched(trained)


def test_max_map_drop_keeps_last_good_step(trained, synthetic_data, tmp_path, monkeypatch):
    pruner = make_run(
        {"model": str(trained["path"]), "data": str(synthetic_data), "project": str(tmp_path), "name": "drop2",
         "rate": 0.5, "iterative_steps": 2, "finetune_epochs": 0, "onnx": False, "max_map_drop": 0.05, **FAST,
         **UNIFORM}
    )
    scripted_validate(monkeypatch, pruner, [(0.5, 0.3), (0.5, 0.28), (0.5, 0.1)])
    final = pruner()
    run = tmp_path / "drop2"
    rows = read_rows(run / "prune_results.csv")
    assert [r["step"] for r in rows] == [0, 1]
    step1 = load_model(run / "step1" / "weights" / "step.pt")
    kept = load_model(final)
    assert conv_widths(kept) == conv_widths(step1)
    assert n_params(kept) == pytest.approx(rows[-1]["params_M"] * 1e6, abs=1e3)
    assert n_params(kept) < 0.8 * rows[0]["params_M"] * 1e6


# ---------------------------------------------------------------------------------------------------------------------
# 10. bad input: one readable line, exit status 2, nothing written


def run_cli_expect_exit2(command: str, errors: list[str], one_line: bool = True) -> str:
    with pytest.raises(SystemExit) as e:
        entrypoint(command)
    assert e.value.code == 2
    assert len(errors) == 1, errors
    assert errors[0].strip(), errors
    if one_line:
        assert "\n" not in errors[0], errors
    return errors[0]


def test_missing_checkpoint(synthetic_data, tmp_path, errors):
    missing, project = tmp_path / "nothere" / "missing.pt", tmp_path / "proj"
    line = run_cli_expect_exit2(
        f"yolo prune model={missing} data={synthetic_data} imgsz=64 workers=0 project={project} name=x", errors
    )
    assert str(missing) in line and "not found" in line
    assert not project.exists(), "no run folder may be made for a missing checkpoint"
    assert not missing.exists()



def test_corrupt_checkpoint(synthetic_data, tmp_path, errors):
    bad, project = tmp_path / "bad.pt", tmp_path / "proj"
    payload = np.random.default_rng(0).bytes(4096)
    bad.write_bytes(payload)
    line = run_cli_expect_exit2(
        f"yolo prune model={bad} data={synthetic_data} imgsz=64 workers=0 project={project} name=x", errors
    )
    assert str(bad) in line.splitlines()[0] and "could not be read" in line
    assert bad.read_bytes() == payload
    assert not project.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"], "nothing else may be written"


def test_rate_out_of_range(trained, synthetic_data, tmp_path, errors):
    project = tmp_path / "proj"
    line = run_cli_expect_exit2(
        f"yolo prune model={trained['path']} data={synthetic_data} rate=1.2 imgsz=64 project={project} name=x", errors
    )
    assert "rate=1.2" in line
    assert not project.exists()


def test_hold_names_no_layer(trained, synthetic_data, tmp_path, errors):
    project = tmp_path / "proj"
    line = run_cli_expect_exit2(
        f"yolo prune model={trained['path']} data={synthetic_data} hold=999 finetune_epochs=0 iterative_steps=1 "
        f"onnx=False imgsz=64 batch=16 workers=0 plots=False project={project} name=x",
        errors,
    )
    assert "hold=999" in line and "names no layer" in line
    assert not project.exists(), sorted(str(p.relative_to(tmp_path)) for p in project.rglob("*"))


def test_run_makes_no_stray_folders(trained, synthetic_data, tmp_path):
    overrides = {**FAST, **UNIFORM, "exist_ok": False}  # the default
    make_run(
        {"model": str(trained["path"]), "data": str(synthetic_data), "project": str(tmp_path / "proj"), "name": "x",
         "rate": 0.5, "iterative_steps": 1, "finetune_epochs": 0, "onnx": False, **overrides}
    )()
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["x"]


def test_hold_names_no_layer_python(trained, synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="'hold=999' names no layer"):
        prune(synthetic_data, tmp_path, "x", model=str(trained["path"]), hold=999, finetune_epochs=0,
              iterative_steps=1, onnx=False)


# ---------------------------------------------------------------------------------------------------------------------
# 11. hold a layer


def test_hold_detect_layer(trained, synthetic_data, tmp_path):
    pruner, final = prune(
        synthetic_data, tmp_path, "hold", model=str(trained["path"]), hold=22, rate=0.5, iterative_steps=1,
        finetune_epochs=0, onnx=False, **UNIFORM,
    )
    original = load_model(trained["path"])
    pruned = load_model(final)
    assert type(pruned.model[22]).__name__ == "Detect"
    before = [m.out_channels for m in original.model[22].modules() if isinstance(m, nn.Conv2d)]
    after = [m.out_channels for m in pruned.model[22].modules() if isinstance(m, nn.Conv2d)]
    assert len(after) == len(before) > 10 and after == before, "hold=22 must keep the Detect layer's widths"
    # the rest of the model was pruned
    rows = read_rows(tmp_path / "hold" / "prune_results.csv")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["macs_G"] < 0.8 * rows[0]["macs_G"]
    outside = [
        (a.out_channels, b.out_channels)
        for i in range(22)
        for a, b in zip(original.model[i].modules(), pruned.model[i].modules())
        if isinstance(a, nn.Conv2d)
    ]
    assert sum(b < a for a, b in outside) > 10


# ---------------------------------------------------------------------------------------------------------------------
# last: the input checkpoint survived every run of this file


def test_input_checkpoint_never_modified(trained):
    assert_untouched(trained)
