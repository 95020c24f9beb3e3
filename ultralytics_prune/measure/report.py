"""Numbers a pruning run reports: MACs, parameters, the ONNX export and its check, the CSV table, the summary line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics import YOLO
from ultralytics.utils import LOGGER, colorstr

from ultralytics_prune.channels.graph import example_input
from ultralytics_prune.files import atomic_path
from ultralytics_prune.measure.latency import time_interleaved
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.patches.dfl import replace_dfl


def count_macs_params(model: nn.Module, imgsz: int) -> tuple[float, int]:
    """Return (MACs, parameters) of `model` for one `imgsz` x `imgsz` image (eval mode, model left unchanged)."""
    probe = deepcopy(model).eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(probe, example_input(probe, imgsz))
    return float(macs), int(params)


def inference_outputs(out) -> list[torch.Tensor]:
    """The tensors an exported model outputs, in order, from an eval-mode Ultralytics output.

    In eval mode a head returns `(predictions, raw head dict)`; the predictions are one tensor (detect, pose, OBB)
    or `(predictions, prototypes)` (segment).
    """
    preds = out[0] if isinstance(out, (list, tuple)) and isinstance(out[-1], dict) else out
    return [preds] if isinstance(preds, torch.Tensor) else [t for t in preds if isinstance(t, torch.Tensor)]


ONNX_TOLERANCE = 1e-3  # an exported model matches PyTorch when every output is within this share of its own scale


def check_onnx(onnx_file: str | Path, model: nn.Module, imgsz: int, atol: float = ONNX_TOLERANCE) -> dict:
    """Run an exported ONNX model in onnxruntime (CPU provider) and compare every output with PyTorch's.

    End-to-end heads (YOLO26) output top-k detections; near-ties may swap order, so their rows are compared sorted by
    score. Each output is compared relative to its own scale.

    Returns:
        (dict): `max_abs_diff` (over all outputs), `match` (bool), `onnx_ms` (median onnxruntime latency) and the
            `shape` of every output.
    """
    import onnxruntime as ort

    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    ref_model = deepcopy(model).float().cpu().eval()
    ref_model = ref_model.fuse() if hasattr(ref_model, "fuse") else ref_model
    with torch.inference_mode():
        refs = [t.numpy() for t in inference_outputs(ref_model(x))]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    outs = session.run(None, feed)
    onnx_ms = float(np.median(time_interleaved([lambda: session.run(None, feed)], rounds=10, warmup=2)[0]))
    shapes = [tuple(o.shape) for o in outs]
    if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
        return {"max_abs_diff": float("inf"), "match": False, "onnx_ms": onnx_ms, "shape": shapes}
    end2end = any(getattr(m, "end2end", False) for m in model.modules())
    diff, match = 0.0, True
    for i, (out, ref) in enumerate(zip(outs, refs)):
        if i == 0 and end2end and ref.ndim == 3:  # detections (B, max_det, 6 + extra): order by score
            ref = ref[:, np.argsort(-ref[0, :, 4], kind="stable")]
            out = out[:, np.argsort(-out[0, :, 4], kind="stable")]
        d = float(np.abs(out - ref).max()) if out.size else 0.0
        scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
        diff, match = max(diff, d), match and d <= atol * scale
    return {"max_abs_diff": diff, "match": match, "onnx_ms": onnx_ms, "shape": shapes}


def export_onnx(weights: str | Path, imgsz: int) -> Path:
    """Export a saved checkpoint to ONNX with Ultralytics' exporter (CPU, fixed shape) and return the file.

    The graph is the one onnxruntime runs fastest, the same function as the checkpoint: the box decoder as `LastAxisDFL`
    (see `patches.dfl`) and each C2f-like block's two halves as two convolutions, not one split in two (measured on a
    pruned yolov8s at 640 px: 38.8 against 39.8 ms, two threads). `yolo export` of the checkpoint gives Ultralytics'
    own graph.
    """
    yolo = YOLO(str(weights))
    replace_blocks(yolo.model)
    replace_dfl(yolo.model)
    return Path(yolo.export(format="onnx", imgsz=imgsz, device="cpu", simplify=True, verbose=False))


class OneBanner(logging.Filter):
    """Lets the first of Ultralytics' "Ultralytics 8.x 🚀 Python-..." banners through and drops the others.

    Every trainer, validator and exporter a run starts prints it; one per run says all it says.
    """

    def __init__(self):
        """Nothing seen yet."""
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a banner after the first."""
        message = str(record.msg)
        if not (message.startswith("Ultralytics ") and "🚀" in message[:40]):
            return True
        seen, self.seen = self.seen, True
        return not seen


@contextmanager
def one_banner() -> Iterator[None]:
    """Ultralytics' banner at most once inside the block (`OneBanner` on its logger, removed after)."""
    banner = OneBanner()
    LOGGER.addFilter(banner)
    try:
        yield
    finally:
        LOGGER.removeFilter(banner)


def write_atomic(file: str | Path, text: str) -> Path:
    """Write `text` to `file` through a temp file and a rename, so the file is always whole (or the old one)."""
    with atomic_path(file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(file)


def log_summary(mode: str, first: dict, last: dict, metric: str = "mAP50-95") -> str:
    """One line naming the run's mode: MACs, parameters, the task's mAP50-95 before -> after, and the PyTorch CPU
    speed-up measured in turns with the parent (two latencies measured minutes apart do not compare)."""
    line = (
        f"{colorstr(f'{mode}: ')}MACs {first['macs_G']:.3f}G -> {last['macs_G']:.3f}G, "
        f"params {first['params_M']:.3f}M -> {last['params_M']:.3f}M, "
        f"{metric} {first[f'{metric}_post']:.4f} -> {last[f'{metric}_post']:.4f}"
        + (f", PyTorch CPU x{last['speedup']:.2f} faster than the parent (timed in turns, {last['latency_ms']:.2f}ms)"
           if "speedup" in last else "")  # fmt: skip
    )
    LOGGER.info(line)
    return line
