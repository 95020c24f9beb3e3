"""The box decoder twin (`patches.dfl`): same outputs as Ultralytics' DFL, a last-axis softmax in the exported graph."""

from __future__ import annotations

import onnx
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel
from ultralytics_prune.patches.dfl import LastAxisDFL, replace_dfl

from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.measure.report import check_onnx, export_onnx

MODELS = [
    (DetectionModel, "yolov8n.yaml", {}),
    (SegmentationModel, "yolo11n-seg.yaml", {}),
    (PoseModel, "yolov8n-pose.yaml", {"data_kpt_shape": (4, 3)}),
    (OBBModel, "yolov8n-obb.yaml", {}),
]


def outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor of an eval-mode forward, flattened out of tuples, lists and dicts."""
    with torch.inference_mode():
        out = model(x)
    stack, found = [out], []
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def test_same_function_as_dfl():
    """On sharp and flat distributions alike the twin decodes what DFL decodes, in FP32 and FP16 shapes."""
    torch.manual_seed(0)
    dfl = DFL(16).eval()
    twin = LastAxisDFL.from_dfl(dfl)
    for scale in (0.1, 3.0, 30.0):
        x = torch.randn(2, 64, 300) * scale
        torch.testing.assert_close(twin(x), dfl(x), rtol=1e-5, atol=1e-5)
    assert twin.conv is dfl.conv and twin(x).shape == (2, 4, 300)


@pytest.mark.parametrize("cls, yaml, kw", MODELS, ids=[m[1] for m in MODELS])
def test_models_decode_the_same(cls, yaml, kw):
    """Every task head with a DFL gets the twin, and the whole model's eval outputs stay the same."""
    torch.manual_seed(0)
    model = cls(yaml, nc=3, verbose=False, **kw).eval()
    x = torch.rand(1, 3, 96, 96)
    before = outputs(model, x)
    assert replace_dfl(model) == 1 and replace_dfl(model) == 0
    assert not any(type(m) is DFL for m in model.modules())
    for a, b in zip(outputs(model, x), before):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_reg_max_1_heads_left_alone():
    """YOLO26 heads decode boxes without DFL (reg_max=1): nothing to replace."""
    assert replace_dfl(DetectionModel("yolo26n.yaml", nc=3, verbose=False)) == 0


def test_our_export_has_only_last_axis_softmax_and_the_checkpoint_plain_dfl(tmp_path):
    """Our export's softmax runs over the last axis (the DFL one over axis 1 is gone) and matches PyTorch; the saved
    checkpoint holds Ultralytics' DFL, so Ultralytics' own exporter gives its axis-1 softmax."""
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    replace_dfl(model)
    weights = save_checkpoint(model, tmp_path / "twin.pt")
    file = export_onnx(weights, 64)
    copy = tmp_path / "theirs.pt"
    copy.write_bytes(weights.read_bytes())  # exports go beside the checkpoint: keep the two files apart
    theirs = YOLO(str(copy)).export(format="onnx", imgsz=64, device="cpu", verbose=False)

    def softmax_axes(graph) -> list[int]:
        return [next((a.i for a in n.attribute if a.name == "axis"), -1) for n in graph.node if n.op_type == "Softmax"]

    assert softmax_axes(onnx.load(theirs).graph) == [1]
    assert softmax_axes(onnx.load(file).graph) == [-1]
    assert check_onnx(file, model, 64)["match"]
    assert type(load_model(weights).model[-1].dfl) is DFL
