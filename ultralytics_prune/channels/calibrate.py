"""What a few training batches tell a pruned model: loss gradients (for Taylor importance) and BatchNorm statistics.

Removing channels changes what every later BatchNorm sees, so its running mean and variance no longer match;
re-estimating them on a few hundred training images (no labels, no gradient) repairs much of the damage of a cut
before any fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import IterableSimpleNamespace


# forward MACs a pass of calibration over training images (the sensitivity scan, the reconstruction) may cost, by device
# type: on one CPU thread (about 23 GMACs/s in the scan of YOLOv8n at 128 px, 1.2 TMACs in 52 s) the CPU budget is some
# 6 minutes; a GPU runs the 64 images of yolov8x at 640 px (1.3 PMACs) inside its own
FORWARD_MACS = {"cpu": 8e12, "cuda": 2e15}


def images_within_budget(macs_per_image: float, device_type: str, most: int, fewest: int) -> int:
    """How many images a calibration pass costing `macs_per_image` forward MACs per image may use on `device_type`:
    as many as `FORWARD_MACS` allows, between `fewest` and `most`. Deterministic for a model, image size and device
    type, so what a run computes does not depend on how fast the machine is."""
    fits = int(FORWARD_MACS.get(device_type, FORWARD_MACS["cpu"]) // max(macs_per_image, 1.0))
    return max(fewest, min(most, fits))


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


@contextmanager
def loss_ready(model: nn.Module, args) -> Iterator[nn.Module]:
    """`model` able to compute its loss (`model.loss` needs `model.args`): set for the block and put back after, so
    nothing of it reaches a checkpoint."""
    saved = {k: model.__dict__[k] for k in ("args", "criterion") if k in model.__dict__}
    model.args, model.criterion = args, None
    try:
        yield model
    finally:
        for k in ("args", "criterion"):
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)


def on_device(batch: dict, device: torch.device) -> dict:
    """A training batch on `device`, its images as floats in [0, 1]."""
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    batch["img"] = batch["img"].float() / 255
    return batch


def loss_gradients(model: nn.Module, args, images: int = 64, each_batch: Callable[[], None] | None = None) -> None:
    """Fill the parameter gradients of `model` with the detection loss of a few training batches (for Taylor).

    Args:
        model (nn.Module): The model; its `.grad` are overwritten.
        args: Ultralytics args (see `training_batches`).
        images (int): How many training images the loss is taken over.
        each_batch (Callable, optional): Called after each batch's backward pass with that batch's gradients alone
            in `.grad` (they are zeroed before each batch); without it the gradients sum over all batches.
    """
    device = next(model.parameters()).device
    with loss_ready(model, args):
        model.train()
        model.zero_grad()
        for batch in training_batches(args, images):
            if each_batch is not None:
                model.zero_grad()
            loss, _ = model.loss(on_device(batch, device))
            loss.sum().backward()
            if each_batch is not None:
                each_batch()


@torch.no_grad()
def eval_loss(model: nn.Module, args, batches: Iterable[dict]) -> float:
    """The task's training loss of `model` in eval mode (BatchNorm running statistics, no augmentation) summed over
    `batches` (from `training_batches`), a label-aware measure of a cut that costs one forward pass per image."""
    device = next(model.parameters()).device
    total = 0.0
    with loss_ready(model, args):
        model.eval()
        for batch in batches:
            batch = on_device(batch, device)
            loss, _ = model.loss(batch, model(batch["img"]))
            total += float(loss.sum())
    return total


def squared_gradients(model: nn.Module, args, images: int = 64) -> None:
    """Fill the parameter gradients of `model` with the mean squared per-image loss gradient (for `hessian`).

    The mean of g * g over single images is the empirical Fisher information, the diagonal Hessian estimate of
    Optimal Brain Damage that torch-pruning's `GroupHessianImportance` reads from `.grad` (its own accumulator in
    1.6.x keeps only the last call's gradient, so it is not used). One backward pass per image.
    """
    squares: dict[nn.Parameter, torch.Tensor] = {}
    counts = [0]

    def accumulate() -> None:
        counts[0] += 1
        for p in model.parameters():
            if p.grad is not None:
                square = p.grad.detach() ** 2
                squares[p] = squares[p] + square if p in squares else square

    loss_gradients(model, IterableSimpleNamespace(**{**vars(args), "batch": 1}), images, each_batch=accumulate)
    for p in model.parameters():
        p.grad = squares[p] / counts[0] if p in squares else None


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
