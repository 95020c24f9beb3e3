"""Latency as the goal: `target_latency=` and `speedup=... speedup_by=latency`, measured on `latency_backend`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides

from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.errors import UserError
from ultralytics_prune.measure.latency_target import LatencyProbe
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.report import count_macs_params
from ultralytics_prune.recipes import latency_goal as latency_goal_module
from ultralytics_prune.recipes.depgraph import DepGraphPruner

FAST = dict(imgsz=64, batch=16, workers=0, plots=False, device="cpu", max_map_drop=1.0, finetune_epochs=0, onnx=False)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False),
                           tmp_path_factory.mktemp("latency") / "v8n.pt")  # fmt: skip


def prune(ckpt: Path, data: Path, project: Path, **keys) -> list[dict]:
    args = get_prune_cfg(overrides={**recipe_overrides({**FAST, **keys}), "model": str(ckpt), "data": str(data),
                                    "project": str(project), "mode": "prune"})  # fmt: skip
    final = DepGraphPruner(args)()
    return read_csv(final.parent.parent / "prune_results.csv")


def test_steps_are_spaced_in_latency_and_stop_at_the_goal(untrained, synthetic_data, tmp_path, monkeypatch):
    """With a latency that follows MACs (a stand-in backend), speedup=2 by latency ends at half, in two steps."""
    calls = []

    class MacsProbe:  # "latency" = MACs: deterministic, so the loop's arithmetic can be checked exactly
        def __init__(self, reference, imgsz, backend, runs=30):
            self.imgsz, self.reference = imgsz, count_macs_params(reference, imgsz)[0] / 1e6
            calls.append(backend)

        def measure(self, model):
            return count_macs_params(model, self.imgsz)[0] / 1e6, self.reference

    monkeypatch.setattr(latency_goal_module, "LatencyProbe", MacsProbe)
    rows = prune(untrained, synthetic_data, tmp_path, speedup=2, speedup_by="latency", iterative_steps=2,
                 latency_backend="torch")  # fmt: skip
    base = rows[0]["torch_ms"]
    assert set(calls) == {"torch"}
    assert rows[1]["torch_ms"] <= base / 2**0.5 and rows[2]["torch_ms"] <= base / 2
    assert rows[1]["torch_ms"] > base / 2, "step 1 aims at the geometric middle, not at the end"
    assert rows[2]["ratio"] < 0.95 and rows[2]["ratio"] > rows[1]["ratio"] > 0
    assert rows[2]["torch_speedup"] == pytest.approx(base / rows[2]["torch_ms"], rel=1e-4)  # CSV keeps 6 digits


def test_target_latency_measured_on_onnxruntime(untrained, synthetic_data, tmp_path):
    """A real measurement: the CSV has the onnxruntime latency per step, the probe export is cleaned away."""
    rows = prune(untrained, synthetic_data, tmp_path, target_latency=1000.0, iterative_steps=1)
    assert rows[0]["onnxruntime_ms"] > 0 and rows[1]["ratio"] == 0, "a goal already met removes nothing"
    assert rows[0]["onnxruntime_speedup"] > 0, "the unpruned model against itself (a ratio of timings: no bound on it)"
    assert not list(tmp_path.rglob("*.onnx")), "timing exports leave no file in the run folder"


def test_probe_times_each_cpu_backend_against_the_reference():
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    for backend in ("torch", "onnxruntime"):
        model_ms, reference_ms = LatencyProbe(model, 64, backend, runs=3).measure(model)
        assert model_ms > 0 and reference_ms > 0


@pytest.mark.parametrize("keys, says", [
    ({"target_latency": 10, "speedup": 2}, "both set where pruning stops"),
    ({"target_latency": -1}, "target_latency"),
    ({"speedup_by": "flops"}, "speedup_by"),
    ({"latency_backend": "TensorRT"}, "latency_backend"),
])  # fmt: skip
def test_latency_keys_checked(keys, says):
    with pytest.raises(UserError, match=says):
        get_prune_cfg(overrides={**keys, "mode": "prune"})


def test_gpu_latency_backends_refused_with_the_reason(monkeypatch):
    """No CUDA device, no TensorRT provider, or a TensorRT latency table: each refused with what to use instead."""
    import onnxruntime

    from ultralytics_prune import cfg

    def check(**keys):
        return get_prune_cfg(overrides={**keys, "mode": "prune"})

    monkeypatch.setattr(cfg, "cuda_available", lambda: False)
    for backend in ("cuda", "tensorrt"):
        with pytest.raises(UserError, match=f"'latency_backend={backend}' needs a CUDA device"):
            check(latency_backend=backend)
    monkeypatch.setattr(cfg, "cuda_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UserError, match="TensorRT provider, which this onnxruntime lacks"):
        check(latency_backend="tensorrt")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["TensorrtExecutionProvider"])
    assert check(latency_backend="tensorrt", target_latency=5).latency_backend == "tensorrt"
    with pytest.raises(UserError, match="use 'latency_backend=cuda' for the table"):
        check(latency_backend="tensorrt", latency_aware=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where no GPU provider can start")
def test_onnx_runner_refuses_a_silent_cpu_fallback(tmp_path):
    """onnxruntime falls back to the CPU when a GPU provider cannot start; timing that as the GPU would be a lie."""
    from ultralytics_prune.measure.latency import onnx_runner

    file = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 64, 64),), str(file), dynamo=False)
    assert onnx_runner(file, 64)() is not None
    for device in ("cuda", "tensorrt"):
        with pytest.raises(RuntimeError, match="could not start .* fell back to CPUExecutionProvider"):
            onnx_runner(file, 64, device=device)


def test_time_interleaved_takes_turns_in_blocks():
    """Every runner is timed `rounds` times; turns alternate in blocks, each opened by one untimed call."""
    from ultralytics_prune.measure.latency import time_interleaved

    calls = []
    times = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], rounds=7, warmup=2, block=3)
    assert [len(t) for t in times] == [7, 7]
    assert "".join(calls) == "aabb" + "aaaa" + "bbbb" + "aaaa" + "bbbb" + "aa" + "bb"
