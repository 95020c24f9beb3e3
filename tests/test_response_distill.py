"""Response distillation: zero where the student answers as the teacher does, a gradient toward it where not, on the
heads of YOLOv8 (distance bins), YOLO26 (end-to-end, no bins) and a segmentation head.

CPU only: models built from Ultralytics' yaml files, 64 px inputs.
"""

from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel, SegmentationModel
from ultralytics.utils import IterableSimpleNamespace

from ultralytics_prune.cfg import DEFAULT_PRUNE_CFG_DICT, ultralytics_args
from ultralytics_prune.errors import UserError
from ultralytics_prune.recipes.group_sparsity import GroupSparsity
from ultralytics_prune.recipes.response_distill import (
    DistilledCriterion,
    ResponseDistillation,
    raw_head_outputs,
    response_loss,
)

YAMLS = ("yolov8n.yaml", "yolo26n.yaml", "yolo11n-seg.yaml")


def built(yaml: str) -> torch.nn.Module:
    """`yaml` for 3 classes with Ultralytics' default training args, in train mode."""
    torch.manual_seed(0)
    model = (SegmentationModel if "-seg" in yaml else DetectionModel)(yaml, nc=3, verbose=False)
    model.args = IterableSimpleNamespace(**vars(ultralytics_args(DEFAULT_PRUNE_CFG_DICT)))
    return model.train()


def batch(segment: bool) -> dict:
    """Two 64 px images with one box each (and its mask for segmentation)."""
    torch.manual_seed(1)
    out = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]]),
    }
    if segment:
        out["masks"] = torch.zeros(2, 16, 16)
        out["masks"][:, 4:12, 4:12] = 1
    return out


@pytest.mark.parametrize("yaml", YAMLS)
def test_the_term_is_zero_for_the_teacher_itself_and_pulls_a_different_student_toward_it(yaml):
    teacher = built(yaml)
    student = deepcopy(teacher)
    data = batch("-seg" in yaml)
    reg_max = int(teacher.model[-1].reg_max)
    with torch.no_grad():
        same = raw_head_outputs(teacher.eval()(data["img"]))
        for branch in same:
            assert response_loss(same[branch], same[branch], reg_max).item() == pytest.approx(0.0, abs=1e-5)

    with torch.no_grad():  # a different student: every head weight moved
        for p in student.model[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    criterion = DistilledCriterion(student.init_criterion(), teacher.eval(), gain=1.0)
    plain_loss, plain_items = student.init_criterion()(student(data["img"]), data)
    loss, items = criterion(student(data["img"]), data)
    assert loss.shape[0] == plain_loss.shape[0] + 1, "the term is one more loss element"
    assert list(items) == [*plain_items, "kd_loss"]
    assert items["kd_loss"].item() > 1e-4
    assert torch.allclose(loss[:-1], plain_loss), "Ultralytics' own loss is untouched"
    assert loss[-1].item() == pytest.approx(items["kd_loss"].item() * data["img"].shape[0], rel=1e-5)
    loss.sum().backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher is not trained"
    assert student.model[-1].cv3[0][-1].weight.grad.abs().sum() > 0, "the class scores are pulled"


def test_gain_scales_the_term():
    teacher, data = built("yolov8n.yaml"), batch(False)
    student = deepcopy(teacher)
    with torch.no_grad():
        for p in student.model[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    preds = student(data["img"])
    one = DistilledCriterion(student.init_criterion(), teacher.eval(), gain=1.0)(preds, data)[0][-1]
    half = DistilledCriterion(student.init_criterion(), teacher.eval(), gain=0.5)(preds, data)[0][-1]
    assert half.item() == pytest.approx(one.item() / 2, rel=1e-5)


@pytest.mark.parametrize("addition", ["response", "sparse"])
def test_fine_tune_additions_refuse_several_devices_in_one_line(addition):
    """Ultralytics' DDP workers get none of the callbacks added to a trainer: both additions say so, naming the fix."""
    trainer = SimpleNamespace(world_size=2, add_callback=lambda *a: pytest.fail("a callback was added"))
    added = ResponseDistillation("teacher.pt", 1.0) if addition == "response" else GroupSparsity({}, 0.9)
    with pytest.raises(UserError) as e:
        added.attach(trainer)
    assert "\n" not in str(e.value) and "one device" in str(e.value)
    assert ("distill_loss=feature" if addition == "response" else "sparse_epochs=0") in str(e.value)
