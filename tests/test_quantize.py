"""Tests of `quantize`: INT8 by onnxruntime static quantization keeps the head's decoding in float, the exporter's
metadata, and the model's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.measure.quantize import calibration_batches, decode_nodes, quantize_int8

IMGSZ = 64


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_int8_keeps_decoding_float_metadata_and_outputs(cfg, synthetic_data, tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(DetectionModel(cfg, nc=3, verbose=False), tmp_path / "m.pt",
                           train_args={"data": str(synthetic_data), "imgsz": IMGSZ, "task": "detect"})  # fmt: skip
    source = Path(YOLO(str(ckpt)).export(format="onnx", imgsz=IMGSZ, verbose=False))
    exported = onnx.load(str(source))
    batches = calibration_batches(synthetic_data, IMGSZ, 8)
    assert len(batches) == 8 and all(b.shape == (1, 3, IMGSZ, IMGSZ) and b.dtype == np.float32 for b in batches)
    assert 0 <= min(b.min() for b in batches) and max(b.max() for b in batches) <= 1
    decode = decode_nodes(exported)
    assert decode and all(n.op_type != "Conv" or "/dfl/" in n.name for n in exported.graph.node if n.name in decode)
    if cfg == "yolov8n.yaml":
        assert "Softmax" in {n.op_type for n in exported.graph.node if n.name in decode}, "the DFL stays float"

    out = quantize_int8(source, batches)
    assert out == tmp_path / "m_int8.onnx"
    quantized = onnx.load(str(out))
    assert {p.key: p.value for p in quantized.metadata_props} == {p.key: p.value for p in exported.metadata_props}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    convs = [n for n in quantized.graph.node if n.op_type == "Conv" and n.name not in decode]
    assert sum(producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear"
               for n in convs) == len(convs), "every convolution reads a quantized input"
    quantizing = {i for n in quantized.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    for n in quantized.graph.node:
        if n.name in decode:  # runs in float: nothing it computes is quantized again
            assert not set(n.output) & quantizing, n.name

    x = batches[0]
    want = ort.InferenceSession(str(source)).run(None, {"images": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"images": x})[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    if cfg == "yolov8n.yaml":  # (1, 4 + nc, anchors); yolo26's top-k detections may differ in order, not comparable
        error = np.abs(got[:, :4] - want[:, :4]).mean() / np.abs(want[:, :4]).mean()
        assert error < 0.1, f"INT8 boxes differ by {error:.1%} on average"
