"""What a few training batches tell a pruned model: loss gradients (for Taylor importance) and BatchNorm statistics.

Removing channels changes what every later BatchNorm sees, so its running mean and variance no longer match;
re-estimating them on a few hundred training images (no labels, no gradient) repairs much of the damage of a cut
before any fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset


def training_batches(args, images: int) -> Iterator[dict]:
    """Batches of the dataset's train split, without augmentation (letterboxed as for validation), `images` in all.

    Args:
        args: Ultralytics args (`data`, `imgsz`, `batch`, ...), without the ultralytics-prune keys.
        images (int): How many images to yield at most.
    """
    data = check_det_dataset(args.data)
    dataset = build_yolo_dataset(args, data["train"], args.batch, data, mode="val", stride=32)
    loader = build_dataloader(dataset, args.batch, 0, shuffle=False)
    seen = 0
    for batch in loader:
        if seen >= images:
            break
        seen += len(batch["img"])
        yield batch


def loss_gradients(model: nn.Module, args, images: int = 64) -> None:
    """Fill the parameter gradients of `model` with the detection loss of a few training batches (for Taylor).

    The loss needs `model.args`; it is set for the call and put back, so nothing of it reaches a checkpoint.
    """
    device = next(model.parameters()).device
    saved = {k: model.__dict__[k] for k in ("args", "criterion") if k in model.__dict__}
    model.args, model.criterion = args, None
    try:
        model.train()
        model.zero_grad()
        for batch in training_batches(args, images):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch["img"] = batch["img"].float() / 255
            loss, _ = model.loss(batch)
            loss.sum().backward()
    finally:
        for k in ("args", "criterion"):
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)


def training_images(args, images: int) -> Iterator[torch.Tensor]:
    """The image batches of `training_batches`, as float tensors in [0, 1]."""
    for batch in training_batches(args, images):
        yield batch["img"].float() / 255


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[torch.Tensor]) -> int:
    """Re-estimate the running mean and variance of every BatchNorm of `model` on the batches `images`.

    The statistics are reset and averaged over the batches with equal weight (momentum None), in training mode
    without gradients; the weights, the momentum and the mode are left as they were.

    Args:
        model (nn.Module): The model, changed in place.
        images (Iterable[torch.Tensor]): Float image batches in [0, 1], e.g. `training_images(args, 256)`.

    Returns:
        (int): The number of images used (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    if not bns:
        return 0
    device = next(model.parameters()).device
    momenta, training = [bn.momentum for bn in bns], model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    used = 0
    try:
        model.train()
        for x in images:
            model(x.to(device))
            used += len(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(training)
    return used
