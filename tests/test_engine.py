"""Tests of the pruning loop's shape: every importance, targets, the Python API, resume, errors, no side effects.

CPU only, on the synthetic 64 px set of conftest.py and an untrained yolov8n checkpoint (mAP is not the point here);
every run prunes without fine-tuning unless the test is about fine-tuning.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import random
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import LOGGER
from ultralytics_prune.cfg import IMPORTANCES, get_prune_cfg, recipe_overrides
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.patches.trainer import PrunedModelTrainer

import ultralytics_prune.recipes.depgraph as pruner_module
from ultralytics_prune import ExportMismatch, UserError, YOLOPrune
from ultralytics_prune.checkpoint import first_non_finite, load_model, save_checkpoint, to_plain
from ultralytics_prune.cli import entrypoint
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.report import count_macs_params
from ultralytics_prune.model import RECIPES

ROOT = Path(__file__).resolve().parents[1]
# no sensitivity scan, no least-squares reconstruction: the loop's own tests; test_prune.py and test_tasks.py run
# the defaults end to end, the tests about the scan ask for it
FAST = dict(imgsz=64, batch=16, workers=0, plots=False, exist_ok=True, device="cpu", max_map_drop=1.0,
            sensitivity=False, reconstruct=0)
PRUNE_ONLY = dict(iterative_steps=1, finetune_epochs=0, onnx=False)
UNIFORM = dict(sensitivity=False)  # every layer loses `rate` of its channels (the default scan would decide per layer)


@pytest.fixture(scope="module")
def untrained(synthetic_data, tmp_path_factory) -> Path:
    """An untrained yolov8n (3 classes) saved as an Ultralytics checkpoint."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    file = tmp_path_factory.mktemp("ckpt") / "v8n.pt"
    return save_checkpoint(model, file, train_args={"data": str(synthetic_data), "imgsz": 64, "task": "detect"})


def make_run(mode: str, **overrides):
    """The recipe object `yolo <mode>` builds, on checked args."""
    return RECIPES[mode](get_prune_cfg(overrides={**recipe_overrides(overrides), "mode": mode}))


def run(mode: str, ckpt: Path, data: Path, project: Path, name: str, **kw):
    """Run a recipe with the fast settings; return the run object and its final checkpoint."""
    recipe = make_run(mode, model=str(ckpt), data=str(data), project=str(project), name=name, **{**FAST, **kw})
    return recipe, recipe()


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def kept_ratios(before: nn.Module, after: nn.Module) -> list[float]:
    """out_channels after / before of every convolution (the same modules in the same order)."""
    return [b / a for a, b in zip(widths(before), widths(after))]


# ---------------------------------------------------------------------------------------------------------------------
# importance criteria, global ranking, compute targets


@pytest.fixture(scope="module")
def by_importance(untrained, synthetic_data, tmp_path_factory) -> dict[str, nn.Module]:
    """The model pruned to rate 0.5 in one step by every importance criterion."""
    project = tmp_path_factory.mktemp("importance")
    return {
        name: run("prune", untrained, synthetic_data, project, name, importance=name, rate=0.5, **UNIFORM,
                  **PRUNE_ONLY)[0].model
        for name in IMPORTANCES
    }


def test_every_importance_prunes_the_same_widths_but_other_channels(by_importance):
    models = list(by_importance.values())
    assert all(widths(m) == widths(models[0]) for m in models), "same rate per layer: same widths"
    # layer 1 (32 channels, 16 kept): layer 0 has 16, which round_to=16 keeps whole
    first = {name: m.model[1].conv.weight.detach() for name, m in by_importance.items()}
    assert all(t.shape[0] == 16 for t in first.values())
    distinct = {tuple(t.flatten()[:64].tolist()) for t in first.values()}
    assert len(distinct) >= 3, "the criteria must keep different channels"
    assert not torch.equal(first["taylor"], first["l2"]), "Taylor must not fall back to magnitude"


def test_taylor_runs_a_gradient_pass_and_leaves_no_args(untrained, synthetic_data, tmp_path, monkeypatch):
    seen = []
    original = pruner_module.loss_gradients

    def spy(model, args, images=64):
        original(model, args, images)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        seen.append(sum(int(g.abs().sum() > 0) for g in grads))

    monkeypatch.setattr(pruner_module, "loss_gradients", spy)
    recipe, final = run("prune", untrained, synthetic_data, tmp_path, "taylor", importance="taylor", **PRUNE_ONLY)
    assert len(seen) == 1 and seen[0] > 50, f"the detection loss must give gradients to the weights: {seen}"
    args = recipe.model.__dict__.get("args", {})  # what Ultralytics' loader set, from the checkpoint's train_args
    assert isinstance(args, dict) and "importance" not in args, "the loss's model.args must be put back"
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert "args" not in ckpt["model"].__dict__, "no model.args pickled into the checkpoint"


def test_global_pruning_ranks_across_layers(untrained, synthetic_data, tmp_path):
    reference = load_model(untrained)
    replace_blocks(reference)  # the same modules, in the same order, as the pruned model
    local, _ = run("prune", untrained, synthetic_data, tmp_path, "local", rate=0.5, round_to=1, **UNIFORM, **PRUNE_ONLY)
    ranked, _ = run("prune", untrained, synthetic_data, tmp_path, "global", rate=0.5, round_to=1, global_pruning=True,
                    **PRUNE_ONLY)  # fmt: skip
    local_ratios = [r for r in kept_ratios(reference, local.model) if r < 1]
    global_ratios = [r for r in kept_ratios(reference, ranked.model) if r < 1]
    assert max(local_ratios) - min(local_ratios) < 0.02, "per-layer pruning keeps the same share everywhere"
    assert max(global_ratios) - min(global_ratios) > 0.15, "a global ranking keeps different shares per layer"


def test_step_of_one_eighth_removes_one_eighth_per_layer(untrained, synthetic_data, tmp_path):
    """rate=0.125, round_to=8 on yolov8n: each prunable layer loses 12.5 % of its width to within one multiple."""
    reference = load_model(untrained)
    replace_blocks(reference)
    recipe, _ = run("prune", untrained, synthetic_data, tmp_path, "eighth", rate=0.125, round_to=8, **UNIFORM,
                    **PRUNE_ONLY)
    before, after = widths(reference), widths(recipe.model)
    pruned = [(a, b) for a, b in zip(before, after) if b < a]
    assert len(pruned) > 20, "the layers of 64 channels and more must lose channels"
    for a, b in zip(before, after):
        assert abs((a - b) - 0.125 * a) <= 8, (a, b)
    row = read_csv(tmp_path / "eighth" / "prune_results.csv")[-1]
    assert row["ratio"] == pytest.approx(0.125)
    assert 0.05 < row["removed"] <= 0.125 + 1e-6, "the share really removed is recorded"


def test_sensitivity_scan_writes_its_table_and_drives_the_widths(untrained, synthetic_data, tmp_path):
    recipe, final = run("prune", untrained, synthetic_data, tmp_path, "sens", rate=0.5, sensitivity=True, plots=True,
                        **PRUNE_ONLY)  # fmt: skip
    table = read_csv(tmp_path / "sens" / "sensitivity.csv")
    assert len(table) > 30 and {"layer", "channels", "kept", "loss", "drop", "ratio"} <= set(table[0])
    assert any(r["drop"] > 0 for r in table), "cutting a layer alone raises the loss"
    total = sum(r["channels"] for r in table)
    assert sum(r["ratio"] * r["channels"] for r in table) == pytest.approx(0.5 * total, rel=1e-4)
    assert (tmp_path / "sens" / "sensitivity.png").is_file()
    assert final.is_file()
    with pytest.raises(UserError, match="choose one"):
        make_run("prune", model=str(untrained), data=str(synthetic_data), sensitivity=True, global_pruning=True)


def test_a_macs_goal_past_the_sensitivity_shares_cuts_the_sensitive_layers_too(untrained, synthetic_data, tmp_path,
                                                                                monkeypatch):
    """Shares that let every layer lose only 5 % of `rate` reach about x1.2 fewer MACs at a run ratio of 0.95; the
    search goes past it (`max_ratio`) until the goal is met, each layer cut in proportion to its share."""
    model = load_model(untrained)
    replace_blocks(model)
    shares = {n: 0.05 for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    monkeypatch.setattr(pruner_module, "sensitivity_ratios", lambda *args, **kwargs: shares)
    base = count_macs_params(model, 64)[0]
    recipe, _ = run("prune", untrained, synthetic_data, tmp_path, "sens_goal", sensitivity=True, speedup=2.0,
                    round_to=8, **PRUNE_ONLY)  # fmt: skip
    assert recipe.max_ratio() == pytest.approx(0.95 * 0.5 / 0.05)
    row = read_csv(tmp_path / "sens_goal" / "prune_results.csv")[-1]
    assert 0.45 * base <= row["macs_G"] * 1e9 <= 0.5 * base, (row["macs_G"] * 1e9, base)
    assert row["ratio"] > 0.95


def test_target_macs(untrained, synthetic_data, tmp_path):
    base = count_macs_params(load_model(untrained), 64)[0] / 1e9
    target = base * 0.5
    _, final = run("prune", untrained, synthetic_data, tmp_path, "macs", target_macs=target, rate=0.1,
                   iterative_steps=2, finetune_epochs=0, onnx=False)  # fmt: skip
    rows = read_csv(tmp_path / "macs" / "prune_results.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert rows[-1]["macs_G"] <= target * 1.001, (rows[-1]["macs_G"], target)
    assert rows[-1]["macs_G"] >= target * 0.6, "overshot the target by far"
    assert rows[1]["macs_G"] > rows[2]["macs_G"], "MACs fall step by step towards the target"


def test_benchmark_reports_a_failing_row_and_goes_on(untrained, synthetic_data, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT))
    from tools.benchmark import main as benchmark_main

    out = tmp_path / "bench"
    code = benchmark_main(["--data", str(synthetic_data), "--model", str(untrained), "--imgsz", "64", "--epochs", "1",
                           "--rows", "base,scratch", "--latency-repeats", "1", "--out", str(out)])  # fmt: skip
    assert code == 1, "a failed row makes the exit status 1"
    rows = read_csv(out / "benchmark.csv")
    assert [r["row"] for r in rows] == ["base", "scratch"]
    base, scratch = rows
    assert base["error"] == "" and base["onnx_ms"] > 0 and base["speedup"] == 1 and base["params_M"] > 3
    assert "prune row" in scratch["error"]
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert (out / name).is_file(), name
    assert "| base |" in (out / "benchmark.md").read_text()


def test_bench_latency_table(untrained, synthetic_data, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT))
    from tools.bench_latency import main as bench_latency

    _, pruned = run("prune", untrained, synthetic_data, tmp_path, "lat", rate=0.5, **UNIFORM, **PRUNE_ONLY)
    out = tmp_path / "latency"
    assert bench_latency([str(untrained), str(pruned), "--imgsz", "64", "--rounds", "3", "--warmup", "1",
                          "--repeat", "2", "--out", str(out)]) == 0  # fmt: skip
    rows = read_csv(out / "latency.csv")
    backends = {r["backend"] for r in rows}
    assert {"torch-cpu", "onnxruntime-cpu-1thread"} <= backends and len(rows) == 2 * len(backends)
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["median_ms"] > 0
        assert r["realization"] == pytest.approx(r["speedup"] / r["macs_factor"], rel=1e-3)
        assert r["realization_low"] <= r["realization"] <= r["realization_high"]
        assert len(str(r["repeat_medians_ms"]).split()) == 2, "one median per repeat"
        if r["model"].startswith("0:"):
            assert r["speedup"] == pytest.approx(1) and r["macs_factor"] == pytest.approx(1)
        else:
            assert r["macs_factor"] > 2.5, "rate 0.5 removes about three quarters of the MACs"
    assert (out / "latency.png").is_file() and json.loads((out / "latency.json").read_text())["rows"]
    assert untrained.is_file() and not untrained.with_suffix(".onnx").exists(), "exports go beside copies"
    assert bench_latency([str(untrained), "--imgsz", "64", "--rounds", "2", "--warmup", "1", "--repeat", "1",
                          "--backends", "1thread", "--out", str(out / "one")]) == 0  # fmt: skip
    assert {r["backend"] for r in read_csv(out / "one" / "latency.csv")} == {"onnxruntime-cpu-1thread"}
    onnx = sorted((out / "onnx").glob("*.onnx"))  # the exports of the first call, timed as files
    assert bench_latency([*map(str, onnx), "--imgsz", "64", "--rounds", "2", "--warmup", "1", "--repeat", "2",
                          "--out", str(out / "files")]) == 0  # fmt: skip
    rows = read_csv(out / "files" / "latency.csv")
    assert {r["backend"] for r in rows} == {"onnxruntime-cpu-1thread", f"onnxruntime-cpu-{os.cpu_count()}threads"}
    assert all(r["median_ms"] > 0 and r["speedup"] > 0 and r["macs_G"] != r["macs_G"] for r in rows), "MACs: NaN"
    assert bench_latency([str(tmp_path / "missing.pt"), "--out", str(out / "none")]) == 2
    assert not (out / "none").exists(), "nothing written for a missing checkpoint"


# ---------------------------------------------------------------------------------------------------------------------
# the Python API and the CLI


def test_python_prune_returns_the_pruned_model(untrained, synthetic_data, tmp_path):
    pruned = YOLOPrune(str(untrained)).prune(data=str(synthetic_data), project=str(tmp_path), name="py", rate=0.5,
                                             epochs=0, iterative_steps=1, onnx=False, **FAST)  # fmt: skip
    assert isinstance(pruned, YOLOPrune)
    assert Path(pruned.ckpt_path) == tmp_path / "py" / "weights" / "pruned.pt"
    n = sum(p.numel() for p in pruned.model.parameters())
    assert n < 0.45 * sum(p.numel() for p in load_model(untrained).parameters())


def test_yolo_slim_cli(untrained, synthetic_data, tmp_path):
    entrypoint(f"yolo slim model={untrained} data={synthetic_data} rate=0.3 epochs=0 onnx=False imgsz=64 batch=16 "
               f"workers=0 plots=False project={tmp_path} name=s")  # fmt: skip
    run_dir = tmp_path / "s"
    assert (run_dir / "weights" / "slimmed.pt").is_file()
    rows = read_csv(run_dir / "slim_results.csv")
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert rows[1]["macs_G"] < rows[0]["macs_G"]
    assert (run_dir / "slim_layers.csv").is_file() and (run_dir / "gamma_before_after.png").is_file()


def test_unexpected_error_keeps_its_traceback(untrained, synthetic_data, tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("boom in fine-tuning")

    monkeypatch.setattr(PrunedModelTrainer, "train", broken)
    with pytest.raises(RuntimeError, match="boom in fine-tuning"):  # not turned into a one-line exit 2
        entrypoint(f"yolo prune model={untrained} data={synthetic_data} iterative_steps=1 epochs=1 onnx=False "
                   f"imgsz=64 batch=16 workers=0 plots=False project={tmp_path} name=t")  # fmt: skip


def test_onnx_mismatch_fails_the_run_loudly(untrained, synthetic_data, tmp_path, monkeypatch, logged):
    import onnx
    from onnx import numpy_helper

    import ultralytics_prune.recipes.loop as engine

    real_export = engine.export_onnx

    def corrupt_export(weights, imgsz):  # export, then scale the first large weight tensor of the file by 3
        file = real_export(weights, imgsz)
        graph = onnx.load(str(file))
        tensor = next(t for t in graph.graph.initializer if numpy_helper.to_array(t).size > 100)
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 3, tensor.name))
        onnx.save(graph, str(file))
        return file

    monkeypatch.setattr(engine, "export_onnx", corrupt_export)
    with logged(logging.ERROR) as lines:
        with pytest.raises(SystemExit) as e:
            entrypoint(f"yolo prune model={untrained} data={synthetic_data} iterative_steps=1 epochs=0 imgsz=64 "
                       f"batch=16 workers=0 plots=False max_map_drop=1 project={tmp_path} name=m")  # fmt: skip
    assert e.value.code == 1 and len(lines) == 1, lines
    assert "does not match PyTorch: max abs diff" in lines[0] and "onnx=False" in lines[0], lines[0]
    assert (tmp_path / "m" / "weights" / "pruned.pt").is_file(), "the checkpoint is still saved"
    assert json.loads((tmp_path / "m" / "onnx_check.json").read_text())["match"] is False
    with pytest.raises(ExportMismatch):  # the Python API raises
        YOLOPrune(str(untrained)).prune(data=str(synthetic_data), iterative_steps=1, epochs=0, project=str(tmp_path),
                                        name="py", **FAST)  # fmt: skip


def test_nan_checkpoint_is_refused(synthetic_data, tmp_path):
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    with torch.no_grad():
        model.model[2].cv1.conv.weight[0, 0, 0, 0] = float("nan")
    ckpt = save_checkpoint_unchecked(model, tmp_path / "nan.pt")
    digest = ckpt.read_bytes()
    with pytest.raises(UserError, match=r"non-finite weights .*model\.2\.cv1\.conv\.weight"):
        make_run("prune", model=str(ckpt), data=str(synthetic_data), project=str(tmp_path / "p"))
    assert not (tmp_path / "p").exists() and ckpt.read_bytes() == digest


def save_checkpoint_unchecked(model: nn.Module, file: Path) -> Path:
    """Write a checkpoint the way Ultralytics does, without our finiteness check (to make a broken one)."""
    torch.save({"model": model.float(), "train_args": {}}, file)
    return file


def test_diverging_finetune_keeps_the_cut_model(untrained, synthetic_data, tmp_path, monkeypatch, logged):
    """Weights that go NaN while fine-tuning: the step keeps the cut model, one line says so, all saved are finite.

    (A NaN *loss* alone does not get this far: Ultralytics skips it in the first epoch and reloads last.pt later.)
    """
    real_step = PrunedModelTrainer.optimizer_step

    def diverging_step(self):
        real_step(self)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(PrunedModelTrainer, "optimizer_step", diverging_step)
    with logged(logging.WARNING) as warnings:
        recipe, final = run("prune", untrained, synthetic_data, tmp_path, "nan", rate=0.3, iterative_steps=1,
                            finetune_epochs=1, onnx=False, batch=8, nbs=8)  # fmt: skip
    assert sum("fine-tuning diverged" in w for w in warnings) == 1, warnings
    row = read_csv(tmp_path / "nan" / "prune_results.csv")[-1]
    assert row["mAP50-95_post"] == row["mAP50-95_pre"], "the step keeps the model of the cut"
    for file in (final, tmp_path / "nan" / "step1" / "weights" / "step.pt"):
        assert first_non_finite(load_checkpoint(file)[0]) is None, file


# ---------------------------------------------------------------------------------------------------------------------
# checked before the run folder exists


def test_not_enough_disk_space(untrained, synthetic_data, tmp_path, monkeypatch):
    import ultralytics_prune.preflight as preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1_000_000})())
    with pytest.raises(UserError, match="not enough disk space .* needs about .* MB, 1 MB are free"):
        make_run("prune", model=str(untrained), data=str(synthetic_data), project=str(tmp_path / "p"), **FAST)
    assert not (tmp_path / "p").exists()


def test_same_name_runs_get_distinct_folders(tmp_path, monkeypatch):
    import ultralytics_prune.run_folder as engine

    first, second = engine.new_run_dir(tmp_path / "exp"), engine.new_run_dir(tmp_path / "exp")
    assert first == tmp_path / "exp" and second != first and second.is_dir()
    real = engine.increment_path
    taken = []

    def racy(path, exist_ok=False):  # the first look sees a free name, but another run takes it before the mkdir
        candidate = real(path, exist_ok=exist_ok)
        if not taken:
            candidate.mkdir()
            taken.append(candidate)
        return candidate

    monkeypatch.setattr(engine, "increment_path", racy)
    third = engine.new_run_dir(tmp_path / "exp")
    assert third not in (first, second, taken[0]) and third.is_dir()
    assert engine.new_run_dir(tmp_path / "exp", exist_ok=True) == tmp_path / "exp", "exist_ok reuses the folder"


# ---------------------------------------------------------------------------------------------------------------------
# resume


def interrupt_after_baseline(run_dir: Path, final_name: str) -> None:
    """Make a finished run look as if it was killed right after its baseline row."""
    csv_file = next(run_dir.glob("*_results.csv"))
    csv_file.write_text("".join(csv_file.read_text().splitlines(keepends=True)[:2]))
    for step in run_dir.glob("step*"):
        shutil.rmtree(step)
    (run_dir / "weights" / final_name).unlink()


def test_slim_resume(untrained, synthetic_data, tmp_path):
    first, final = run("slim", untrained, synthetic_data, tmp_path, "s", rate=0.3, finetune_epochs=0, onnx=False)
    reference = widths(to_plain(copy.deepcopy(first.model)))  # as saved: Ultralytics' own blocks
    interrupt_after_baseline(tmp_path / "s", "slimmed.pt")
    resumed = make_run("slim", resume=str(tmp_path / "s"))
    assert resumed() == final and final.is_file()
    assert widths(load_model(final)) == reference
    assert [int(r["step"]) for r in read_csv(tmp_path / "s" / "slim_results.csv")] == [0, 1]
    with pytest.raises(UserError, match="finished"):
        make_run("slim", resume=str(tmp_path / "s"))


def test_resume_true_finds_the_latest_unfinished_run(untrained, synthetic_data, tmp_path):
    for name in ("older", "newer", "done"):
        run("prune", untrained, synthetic_data, tmp_path, name, rate=0.4, iterative_steps=2, finetune_epochs=0,
            onnx=False, **UNIFORM)  # fmt: skip
    for name in ("older", "newer"):
        interrupt_after_baseline(tmp_path / name, "pruned.pt")
    (tmp_path / "newer" / "args.yaml").touch()  # the latest unfinished one; "done" is finished
    recipe = make_run("prune", resume=True, project=str(tmp_path))
    assert recipe.save_dir == tmp_path / "newer"
    assert recipe() == tmp_path / "newer" / "weights" / "pruned.pt"
    assert not (tmp_path / "older" / "weights" / "pruned.pt").exists()
    with pytest.raises(UserError, match="no unfinished prune run"):
        make_run("prune", resume=True, project=str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------------------------
# no side effects on the caller's process


def test_prune_leaves_rng_and_matplotlib_backend_alone(untrained, synthetic_data, tmp_path):
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        torch.manual_seed(1234)
        np.random.seed(1234)
        random.seed(1234)
        states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
        YOLOPrune(str(untrained)).prune(data=str(synthetic_data), project=str(tmp_path), name="fx", rate=0.3,
                                        epochs=1, iterative_steps=1, onnx=True, **FAST)  # fmt: skip
        assert torch.equal(torch.get_rng_state(), states[0]), "torch's global RNG was used or reseeded"
        assert np.array_equal(np.random.get_state()[1], states[1]), "numpy's global RNG was used or reseeded"
        assert random.getstate() == states[2], "Python's global RNG was used or reseeded"
        assert matplotlib.get_backend().lower() == "svg", "the matplotlib backend was switched"
        assert (tmp_path / "fx" / "prune_results.png").is_file()
    finally:
        matplotlib.use(backend)


# ---------------------------------------------------------------------------------------------------------------------
# the code's shape


def project_modules() -> dict[str, Path]:
    """Module name -> file of every module of ultralytics_prune and its subpackages, with patches/ and cfg/ under their
    package names."""
    modules = {}
    for folder, package in ((ROOT / "ultralytics_prune", "ultralytics_prune"), (ROOT / "patches",
                            "ultralytics_prune.patches"), (ROOT / "cfg", "ultralytics_prune.cfg")):  # fmt: skip
        for file in folder.rglob("*.py"):
            parts = [package, *file.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def test_no_import_cycle_and_no_long_module():
    modules = project_modules()
    assert len(modules) > 15 and any(name.count(".") > 1 for name in modules), "the subpackages are walked"
    edges = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text())
        found = set()
        for node in ast.walk(tree):  # every import counts, typing-only ones too
            if isinstance(node, ast.ImportFrom) and node.module:  # `from a.b import c`: a.b, or a.b.c if a module
                found.update(m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in modules)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
        edges[name] = found - {name}
        assert len(file.read_text().splitlines()) <= 400, f"{file} is over 400 lines"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno + 1 <= 200, f"class {node.name} of {file} is over 200 lines"

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        for nxt in edges[node]:
            if nxt != "ultralytics_prune":  # the package's __init__ re-exports; importing it is not a cycle here
                visit(nxt, [*path, node])

    for name in modules:
        visit(name, [])


def test_one_banner_per_run(logged):
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_prune.measure.report import one_banner

    with logged(logging.INFO) as lines, one_banner():
        for _ in range(3):
            select_device("cpu", verbose=True)  # what every trainer, validator and exporter of a run calls
        LOGGER.info("other lines pass")
    assert sum(line.startswith("Ultralytics ") for line in lines) == 1 and "other lines pass" in lines
