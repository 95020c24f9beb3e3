"""Latency as a pruning goal: the model's measured latency on the backend it will run on (`latency_backend`).

`onnxruntime` (the default) exports the model the way a user would (Ultralytics' exporter, a fixed-shape ONNX file)
and times it in onnxruntime on the CPU with its default threads; `torch` times the fused model in PyTorch on the CPU;
`cuda` in PyTorch on the first GPU. Every measurement is a median over interleaved runs of one image.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch.nn as nn
from ultralytics.utils import LOGGER

from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.latency import onnx_runner, time_interleaved, torch_runner
from ultralytics_prune.report import export_onnx


@contextmanager
def quiet_exports():
    """Keep Ultralytics' export log lines out of the run log while probing (restored afterwards)."""
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def backend_runner(model: nn.Module, imgsz: int, backend: str, file: Path):
    """A call that runs `model` once on `backend` (for onnxruntime, exported to `file`'s folder first)."""
    if backend in ("torch", "cuda"):
        return torch_runner(model, imgsz, "cuda" if backend == "cuda" else "cpu")
    file.parent.mkdir(parents=True, exist_ok=True)
    with quiet_exports():
        onnx_file = export_onnx(save_checkpoint(model, file), imgsz)
    return onnx_runner(onnx_file, imgsz)


class LatencyProbe:
    """Times models on a backend against a reference (the unpruned model), in interleaved rounds.

    Each round runs the reference and the model once, so a slow spell of the machine hits both alike: the ratio of
    their medians holds on a busy machine, where two separate measurements would not.

    Args:
        reference (nn.Module): The model latencies are compared with.
        imgsz (int): Image side.
        backend (str): `onnxruntime`, `torch` or `cuda`.
        workdir (Path): Where exports go while measuring (emptied after each measurement).
        runs (int): Timed rounds per measurement.
    """

    def __init__(self, reference: nn.Module, imgsz: int, backend: str, workdir: Path, runs: int = 30):
        """Prepare the reference's runner (exported once)."""
        self.imgsz, self.backend, self.workdir, self.runs = imgsz, backend, workdir, runs
        self.reference = backend_runner(reference, imgsz, backend, workdir / "reference.pt")

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """Median latency (ms) of `model` and of the reference, from the same interleaved rounds."""
        try:
            runner = backend_runner(model, self.imgsz, self.backend, self.workdir / "probe.pt")
            model_ms, reference_ms = time_interleaved([runner, self.reference], rounds=self.runs, warmup=3)
        finally:
            for f in self.workdir.glob("probe*"):
                f.unlink()
        return float(np.median(model_ms)), float(np.median(reference_ms))
