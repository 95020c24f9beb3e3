"""A twin of Ultralytics' `DFL` (the box decoder of the detection heads) whose exported graph runs faster.

`DFL` takes a softmax over the 16 bins of every box side along axis 1 of a (B, 16, 4, A) tensor, then a 1x1
convolution with the fixed weights 0..15. onnxruntime runs a softmax that is not over the last axis by transposing
around it for every call: at 640 px (8400 anchors) that softmax alone took 4.4 ms of a pruned yolov8s's 43 ms on two
CPU threads, the same as in the unpruned model, so it was the largest cost that pruning cannot shrink.
`LastAxisDFL` lays the bins out last, takes the softmax there and sums with the same weights as a matrix product:
the same function (equal up to float rounding, ~1e-6), exported as a softmax over the last axis (0.8 ms at 1 thread).

Examples:
    >>> from ultralytics.nn.tasks import DetectionModel
    >>> model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    >>> replace_dfl(model)
    1
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import DFL

__all__ = ("LastAxisDFL", "replace_dfl", "restore_dfl")


class LastAxisDFL(DFL):
    """`DFL` with the softmax over the last axis (see the module doc); same weights, same output shape (B, 4, A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode distributions of shape (B, 4 * c1, A) into expected box distances of shape (B, 4, A)."""
        b, _, a = x.shape
        bins = x.view(b, 4, self.c1, a).transpose(2, 3).softmax(-1)  # (B, 4, A, c1)
        return (bins @ self.conv.weight.view(self.c1, 1).to(bins.dtype)).view(b, 4, a)

    @classmethod
    def from_dfl(cls, dfl: DFL) -> LastAxisDFL:
        """The twin of `dfl`, holding the same (fixed) integral convolution."""
        twin = cls.__new__(cls)
        nn.Module.__init__(twin)
        twin.conv, twin.c1 = dfl.conv, dfl.c1
        return twin.train(dfl.training)


    def to_plain(self) -> DFL:
        """Ultralytics' `DFL` holding the same (fixed) integral convolution."""
        plain = DFL.__new__(DFL)
        nn.Module.__init__(plain)
        plain.conv, plain.c1 = self.conv, self.c1
        return plain.train(self.training)


def _swap(model: nn.Module, source: type[nn.Module], convert) -> int:
    """Replace, in place, every module of exact type `source` held by a module of `model` by `convert(it)`."""
    count = 0
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if type(child) is source:
                setattr(parent, name, convert(child))
                count += 1
    return count


def replace_dfl(model: nn.Module) -> int:
    """Swap, in place, every `DFL` (exact type) held by a module of `model` for `LastAxisDFL`; returns how many.

    Heads with `reg_max=1` (YOLO26) hold an `nn.Identity` instead and are left as they are.
    """
    return _swap(model, DFL, LastAxisDFL.from_dfl)


def restore_dfl(model: nn.Module) -> int:
    """Swap, in place, every `LastAxisDFL` of `model` back for Ultralytics' `DFL`; returns how many."""
    return _swap(model, LastAxisDFL, LastAxisDFL.to_plain)
