"""Response distillation: a fine-tune pulls the pruned student's head outputs toward its unpruned parent's.

Ultralytics' own distillation (`distill_loss=feature`) matches neck features through projector convolutions that start
random, so its first epochs push the student's features toward whatever those projectors make of them; on a pruned
copy of the teacher that cost 9-10 mAP50-95 points in short fine-tunes. Here the student is compared with the teacher
where both already speak the same language, anchor by anchor in the raw head outputs:

- class scores: the Bernoulli KL divergence of the student's sigmoid from the teacher's, every class and anchor;
- boxes: the KL divergence of the student's distance distributions (DFL bins) from the teacher's, or the absolute
  difference of the distances for heads without bins (YOLO26, `reg_max=1`), weighted by the teacher's confidence.

Both are summed and divided by the teacher's summed confidence (its max class probability per anchor), as
Ultralytics normalises its class loss by the summed target scores, then scaled by `distill_gain` and the batch size
like every Ultralytics loss term. End-to-end heads are matched branch by branch. The term appears as `kd_loss` in
the progress bar and results.csv.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_prune.checkpoint import read_checkpoint
from ultralytics_prune.errors import refuse_several_devices


def raw_head_outputs(preds) -> dict[str, dict[str, torch.Tensor]]:
    """The raw head dicts of a detection-family model's output, by branch (`{"one2many": ...}` for plain heads).

    In training mode a head returns its raw dict (segment: inside a tuple with the prototypes); in eval mode
    `(decoded, raw)`.
    """
    if isinstance(preds, (tuple, list)):
        preds = next(p for p in reversed(preds) if isinstance(p, dict))
    return {k: preds[k] for k in ("one2many", "one2one") if k in preds} or {"one2many": preds}


def response_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], reg_max: int) -> torch.Tensor:
    """The distillation loss of one head branch (see module docstring); a scalar, per image."""
    s_cls, t_cls = student["scores"].float(), teacher["scores"].float()
    t_prob = t_cls.sigmoid()
    cls_kl = F.binary_cross_entropy_with_logits(s_cls, t_prob, reduction="none") - F.binary_cross_entropy_with_logits(
        t_cls, t_prob, reduction="none"
    )  # BCE(s, t) - H(t): 0 where the student matches
    weight = t_prob.amax(1)  # (B, anchors): how sure the teacher is that something is there
    s_box, t_box = student["boxes"].float(), teacher["boxes"].float()
    if reg_max > 1:
        b, _, n = s_box.shape
        s_box, t_box = s_box.view(b, 4, reg_max, n), t_box.view(b, 4, reg_max, n)
        box = F.kl_div(s_box.log_softmax(2), t_box.log_softmax(2), log_target=True, reduction="none").sum((1, 2))
    else:
        box = (s_box - t_box).abs().sum(1)
    return (cls_kl.sum() + (box * weight).sum()) / weight.sum().clamp(min=1.0)


class ResponseDistillation:
    """Adds the response distillation term to a fine-tune's loss (attach with `attach(trainer)` before `train()`).

    Args:
        teacher (str | Path | nn.Module): The teacher: a checkpoint path or a module (kept frozen, in eval mode).
        gain (float): `distill_gain`, the term's weight next to Ultralytics' loss.
    """

    def __init__(self, teacher: str | Path | nn.Module, gain: float):
        """Keep the teacher (loaded when the fine-tune starts) and the gain."""
        self.teacher, self.gain = teacher, gain

    def attach(self, trainer) -> None:
        """Wrap the student's criterion once the trainer has built its model (Ultralytics' `on_train_start`); on one
        device only (`errors.refuse_several_devices`)."""
        refuse_several_devices(trainer, "distill_loss=response", "'distill_loss=feature'")
        trainer.add_callback("on_train_start", self.on_train_start)

    def on_train_start(self, trainer) -> None:
        """Load the teacher onto the trainer's device and wrap the student's criterion."""
        if not isinstance(self.teacher, nn.Module):
            self.teacher = read_checkpoint(self.teacher)[0]
        self.teacher = self.teacher.float().to(trainer.device).eval().requires_grad_(False)
        student = unwrap_model(trainer.model)
        student.criterion = DistilledCriterion(student.init_criterion(), self.teacher, self.gain)


class DistilledCriterion:
    """A task's criterion plus the response distillation term, as `kd_loss`."""

    def __init__(self, criterion, teacher: nn.Module, gain: float):
        """Wrap `criterion` (Ultralytics' loss of the student's task)."""
        self.criterion, self.teacher, self.gain = criterion, teacher, gain
        self.reg_max = int(unwrap_model(teacher).model[-1].reg_max)

    def __call__(self, preds, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Ultralytics' loss and items of the student, with the distillation term appended."""
        loss, items = self.criterion(preds, batch)
        with torch.no_grad():
            teacher = raw_head_outputs(self.teacher(batch["img"]))
        student = raw_head_outputs(preds)
        kd = sum(response_loss(student[k], teacher[k], self.reg_max) for k in student) / len(student)
        kd = kd * self.gain
        return torch.cat([loss, (kd * batch["img"].shape[0]).view(1).to(loss.dtype)]), {**items, "kd_loss": kd.detach()}
