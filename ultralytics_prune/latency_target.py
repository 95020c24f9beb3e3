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


def backend_latency(model: nn.Module, imgsz: int, backend: str, workdir: Path, runs: int = 30) -> float:
    """Median latency (ms, one `imgsz` image) of `model` on `backend`; `workdir` holds the probe export briefly."""
    if backend in ("torch", "cuda"):
        runner = torch_runner(model, imgsz, "cuda" if backend == "cuda" else "cpu")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        with quiet_exports():
            onnx_file = export_onnx(save_checkpoint(model, workdir / "probe.pt"), imgsz)
        runner = onnx_runner(onnx_file, imgsz)
    try:
        return float(np.median(time_interleaved([runner], rounds=runs, warmup=3)[0]))
    finally:
        for f in workdir.glob("probe*"):
            f.unlink()
