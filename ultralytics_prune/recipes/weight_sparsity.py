"""Weight sparsity: zero the globally smallest convolution weights, and keep them at zero while training.

Used by `yolo prune method=unstructured` (see `unstructured`) and by the trainers, which hold the zeros of a model
marked `unstructured` through every optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import DFL


def conv_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every convolution of `model` but DFL's fixed projection (which decodes the boxes)."""
    fixed = {id(m.conv) for m in model.modules() if isinstance(m, DFL)}
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in fixed]


def zero_share(model: nn.Module) -> float:
    """The share of the convolution weights of `model` (`conv_weights`) that are exactly zero."""
    weights = conv_weights(model)
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


@torch.no_grad()
def prune_smallest_weights(model: nn.Module, ratio: float) -> float:
    """Zero the `ratio` share of `model`'s convolution weights with the smallest magnitude, ranked globally.

    Returns:
        (float): The share of convolution weights that are zero afterwards.
    """
    weights = conv_weights(model)
    magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    smallest = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    smallest[torch.argsort(magnitudes, stable=True)[: int(ratio * magnitudes.numel())]] = True
    for w, zero in zip(weights, smallest.split([w.numel() for w in weights])):
        w[zero.view_as(w).to(w.device)] = 0
    return zero_share(model)


def hold_zero_weights(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Keep every convolution weight of `model` that is zero now at zero through `optimizer`'s steps (a post-hook).

    The hook runs inside `optimizer.step()`, before Ultralytics updates its EMA, so the EMA stays sparse too.
    """
    masks = [(w, w.detach() != 0) for w in conv_weights(model)]

    def reapply(*_):
        with torch.no_grad():
            for w, mask in masks:
                w.mul_(mask)

    optimizer.register_step_post_hook(reapply)
