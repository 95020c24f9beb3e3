"""What a run checks before its folder exists: the dataset, its class count, the device, the image size, the disk.

A run that cannot start must fail here, with one line, and leave nothing behind (no run folder, no file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset
from ultralytics.utils.torch_utils import select_device

from ultralytics_prune.errors import UserError


def has_images(source) -> bool:
    """True when a dataset split (a folder, a txt list of images, or a list of either) names at least one image."""
    if isinstance(source, (list, tuple)):
        return any(has_images(s) for s in source)
    path = Path(source)
    if path.is_dir():
        return any(p.suffix[1:].lower() in IMG_FORMATS for p in path.rglob("*"))
    return path.is_file() and path.suffix == ".txt" and bool(path.read_text().strip())


def check_dataset(data, model: nn.Module | None = None) -> dict:
    """The dataset's dict when it exists, has train and val images, and matches the model's classes and keypoints.

    Raises:
        UserError: A missing or unreadable data.yaml, a split without images, or a class-count or keypoint-shape
            mismatch with `model` (when given).
    """
    if not data:
        raise UserError("'data' argument is missing: pass the dataset the model was trained on, e.g. 'data=my.yaml'")
    try:
        info = check_det_dataset(data, autodownload=False)
    except Exception as e:  # Ultralytics raises several types, with multi-line messages, for a bad dataset
        reason = " ".join(str(e).replace("❌️", "").split())
        raise UserError(f"dataset 'data={data}' cannot be used: {reason}") from e
    for split in ("train", "val"):
        if not has_images(info.get(split) or []):
            where = info.get(split)
            raise UserError(f"dataset 'data={data}' has no {split} images ({where}): add images or fix the path")
    nc = getattr(model, "nc", None) or (getattr(model, "yaml", None) or {}).get("nc")
    if nc is not None and int(info["nc"]) != int(nc):
        raise UserError(
            f"the model predicts {nc} classes but 'data={data}' has {info['nc']}: "
            f"prune with the dataset it was trained on"
        )
    kpt_shape = getattr(model, "kpt_shape", None)
    if kpt_shape is not None and list(info.get("kpt_shape") or []) != list(kpt_shape):
        raise UserError(
            f"the model predicts keypoints of kpt_shape={list(kpt_shape)} but 'data={data}' has "
            f"kpt_shape={info.get('kpt_shape')}: prune with the dataset it was trained on"
        )
    return info


def check_device(device) -> None:
    """Raise `UserError` when `device` names no device of this machine (e.g. 'device=7' without GPUs).

    CUDA indices are checked here (Ultralytics' `select_device` would log its banner first and raise a multi-line
    message); any other device string is left to `select_device`.
    """
    text = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if text in {"", "cpu", "mps", "mps:0", "-1"}:
        return
    if all(x.strip().isdigit() for x in text.split(",")):
        count = torch.cuda.device_count()
        if any(int(x) >= count for x in text.split(",")):
            raise UserError(f"'device={device}' names no GPU of this machine ({count} CUDA devices seen): "
                            f"use 'device=cpu' or an index below {max(count, 1)}")  # fmt: skip
        return
    try:
        select_device(device, verbose=False)
    except Exception as e:  # ValueError from Ultralytics for an unknown or unavailable device
        raise UserError(f"'device={device}' cannot be used: {str(e).splitlines()[0]}") from e


def check_imgsz(imgsz) -> None:
    """Raise `UserError` unless `imgsz` is one square size of at least 32 pixels (the largest stride)."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise UserError(f"'imgsz={imgsz}' cannot be used for pruning: pass one square size >= 32, e.g. 'imgsz=640'")


def check_disk(folder: Path, checkpoint: Path, files: int) -> None:
    """Raise `UserError` when the disk under `folder` cannot hold `files` copies of `checkpoint` and their exports.

    Each step keeps its model and its fine-tune's checkpoints; half a checkpoint more per file covers the ONNX export
    and the plots.
    """
    folder = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    needed = int(Path(checkpoint).stat().st_size * files * 1.5)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UserError(
            f"not enough disk space under {folder}: the run needs about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB "
            f"are free; free some space or pass another 'project='"
        )
