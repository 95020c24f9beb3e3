"""The tasks ultralytics-prune prunes, and what differs between them.

Ultralytics' segment, pose and OBB models, trainers and validators subclass the detection ones; so do ours. A task
says which Ultralytics classes it uses and which metric is its own: mask mAP for segment, pose mAP for pose, the
(rotated) box mAP for detect and OBB. That metric is the one `max_map_drop` watches; the run CSV has the box metric
too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from ultralytics.models import yolo
from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel

from ultralytics_prune.errors import UserError


@dataclass(frozen=True)
class Task:
    """One task: Ultralytics' model, trainer and validator classes and the task's own metric.

    Attributes:
        name (str): Ultralytics' task name (`detect`, `segment`, `pose`, `obb`).
        model (type): The exact model class a checkpoint of this task holds.
        trainer (type): Ultralytics' trainer, which ours subclass.
        validator (type): Ultralytics' validator.
        suffix (str): The metrics-key suffix of the task's own metric (`metrics/mAP50-95(M)` -> "M").
        prefix (str): The CSV column prefix of the task's own metric ("" when it is the box metric).
    """

    name: str
    model: type
    trainer: type
    validator: type
    suffix: str
    prefix: str

    @property
    def metric(self) -> str:
        """The column of the task's own mAP50-95 (without `_pre`/`_post`): the one `max_map_drop` watches."""
        return f"{self.prefix}mAP50-95"

    def metric_columns(self, stats: dict) -> dict[str, float]:
        """Box mAP50 and mAP50-95, and the task's own when it has one, from a validator's results dict."""
        columns = {"mAP50": stats["metrics/mAP50(B)"], "mAP50-95": stats["metrics/mAP50-95(B)"]}
        if self.prefix:
            columns[f"{self.prefix}mAP50"] = stats[f"metrics/mAP50({self.suffix})"]
            columns[f"{self.prefix}mAP50-95"] = stats[f"metrics/mAP50-95({self.suffix})"]
        return {k: float(v) for k, v in columns.items()}


TASKS = {
    "detect": Task("detect", DetectionModel, yolo.detect.DetectionTrainer, yolo.detect.DetectionValidator, "B", ""),
    "segment": Task("segment", SegmentationModel, yolo.segment.SegmentationTrainer,
                    yolo.segment.SegmentationValidator, "M", "mask_"),  # fmt: skip
    "pose": Task("pose", PoseModel, yolo.pose.PoseTrainer, yolo.pose.PoseValidator, "P", "pose_"),
    "obb": Task("obb", OBBModel, yolo.obb.OBBTrainer, yolo.obb.OBBValidator, "B", ""),
}
SUPPORTED = ", ".join(TASKS)


def task_of(model: nn.Module, source: str = "the model") -> Task:
    """The task of a YOLO model we can prune, or one readable line saying what it is and what we prune.

    The class must be exactly one of the task models: RT-DETR, YOLO-World and YOLOE subclass them but have heads
    whose channels are tied to text embeddings or transformer queries.

    Raises:
        UserError: The model is of another family or task.
    """
    for task in TASKS.values():
        if type(model) is task.model:
            return task
    name = type(model).__name__
    raise UserError(f"{source} holds a {name}; ultralytics-prune prunes YOLO {SUPPORTED} models (e.g. yolo11n-seg.pt)")
