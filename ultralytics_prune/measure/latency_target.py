"""Latency as a pruning goal: the model's measured latency on the backend it will run on (`latency_backend`).

`onnxruntime` (the default) exports the model the way a user would (Ultralytics' exporter, a fixed-shape ONNX file)
and times it in onnxruntime on the CPU with its default threads; `torch` times the fused model in PyTorch on the CPU;
`cuda` in PyTorch on the first GPU; `tensorrt` runs the same ONNX file in onnxruntime's TensorRT provider at FP16 on
the first GPU (an engine is built per timed model, which takes a while). Every measurement is a median over runs of
one image, taken in turns with the unpruned model.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch.nn as nn
from ultralytics.utils import LOGGER

from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.measure.latency import onnx_runner, time_interleaved, torch_runner
from ultralytics_prune.measure.report import export_onnx


@contextmanager
def quiet_exports():
    """Keep Ultralytics' export log lines out of the run log while probing (restored afterwards)."""
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


@contextmanager
def exported(model: nn.Module, imgsz: int) -> Iterator[Path]:
    """The ONNX file of `model` as a run exports it (`report.export_onnx`), in a temporary folder removed on exit."""
    with tempfile.TemporaryDirectory(prefix="ultralytics-prune-latency-") as tmp, quiet_exports():
        yield export_onnx(save_checkpoint(model, Path(tmp) / "probe.pt"), imgsz)


def backend_runner(model: nn.Module, imgsz: int, backend: str):
    """A call that runs `model` once on `backend`; for onnxruntime the model is exported to a temporary folder, loaded
    into a session, and the files removed (the session holds the graph)."""
    if backend in ("torch", "cuda"):
        return torch_runner(model, imgsz, "cuda" if backend == "cuda" else "cpu")
    with exported(model, imgsz) as file:
        return onnx_runner(file, imgsz, device="tensorrt" if backend == "tensorrt" else "cpu")


class LatencyProbe:
    """Times models on a backend against a reference (the unpruned model), taking turns in short blocks.

    A slow spell of the machine hits both alike, so the ratio of their medians holds on a busy machine, where two
    separate measurements would not (see `latency.time_interleaved`).

    Args:
        reference (nn.Module): The model latencies are compared with.
        imgsz (int): Image side.
        backend (str): `onnxruntime`, `torch`, `cuda` or `tensorrt`.
        runs (int): Timed calls of each model per measurement.
    """

    def __init__(self, reference: nn.Module, imgsz: int, backend: str, runs: int = 30):
        """Prepare the reference's runner (exported once)."""
        self.imgsz, self.backend, self.runs = imgsz, backend, runs
        self.reference = backend_runner(reference, imgsz, backend)

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """Median latency (ms) of `model` and of the reference, from the same interleaved blocks."""
        runner = backend_runner(model, self.imgsz, self.backend)
        model_ms, reference_ms = time_interleaved([runner, self.reference], rounds=self.runs, warmup=3)
        return float(np.median(model_ms)), float(np.median(reference_ms))
