"""INT8 on top of pruning: onnxruntime static quantization of an exported model, calibrated on training images.

Deployment stacks quantization on pruning; `tools/benchmark.py --int8` measures what it adds. Weights are quantized
per output channel (signed), activations per tensor (unsigned), QDQ format, min/max calibration on training images
letterboxed as Ultralytics' validator loads them. The head's box and class decoding (DFL softmax, anchors, sigmoid,
concatenations) stays in float: its outputs are pixel coordinates and probabilities whose range one INT8 scale cannot
hold, and Ultralytics' own INT8 exports leave it out of quantization as well. The exporter's metadata (names, stride, image
size) is kept, so `yolo val model=model_int8.onnx` works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CALIBRATION_IMAGES = 64  # training images the activation ranges are measured on


def calibration_batches(data: str | Path, imgsz: int, n: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """The first `n` training images of dataset `data` as the exported model takes them: loaded as
    `calibrate.training_batches` loads them (no augmentation, letterboxed to `imgsz`), float32 in [0, 1], batches of
    one."""
    from ultralytics.cfg import get_cfg

    from ultralytics_prune.channels.calibrate import training_batches

    args = get_cfg(overrides={"data": str(data), "imgsz": imgsz, "batch": 1, "workers": 0})
    return [(batch["img"].float() / 255).numpy() for batch in training_batches(args, n)]


def decode_nodes(model) -> list[str]:
    """The nodes of an exported YOLO graph that decode the head's outputs: those of the last module (named
    `/model.<last>/...` by the exporter) that belong to none of its convolution branches (`cv2`, `cv3`, `proto`...),
    and its DFL."""
    prefixes = {n.name.split("/")[1] for n in model.graph.node if n.name.startswith("/model.")}
    last = max((p for p in prefixes if p.split(".")[-1].isdigit()), key=lambda p: int(p.split(".")[-1]))
    parts = [n.name.split("/") for n in model.graph.node if n.name.startswith(f"/{last}/")]
    return ["/".join(p) for p in parts if len(p) == 3 or p[2] == "dfl"]


def quantize_int8(onnx_file: str | Path, batches: Sequence[np.ndarray], out: str | Path | None = None) -> Path:
    """Quantize an exported model to INT8 with onnxruntime, calibrated on `batches`; return the new file.

    Args:
        onnx_file (str | Path): A model exported by Ultralytics' exporter (fixed input shape).
        batches (Sequence[np.ndarray]): Calibration inputs of the model's shape (see `calibration_batches`).
        out (str | Path | None): Where to write; default `<name>_int8.onnx` beside the input.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source = Path(onnx_file)
    out = Path(out) if out else source.with_name(f"{source.stem}_int8.onnx")
    model = onnx.load(str(source))
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            return next(({name: x} for x in self.batches), None)

    quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=decode_nodes(model))  # fmt: skip
    quantized = onnx.load(str(out))
    onnx.helper.set_model_props(quantized, {p.key: p.value for p in model.metadata_props})
    onnx.save(quantized, str(out))
    return out
