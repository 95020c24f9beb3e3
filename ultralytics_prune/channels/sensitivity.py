"""Per-layer sensitivity: how much each prunable layer hurts the model when it alone is pruned, and the ratios it earns.

A scan before the first step (`sensitivity=True`): every prunable group of the model is cut alone to the run's final
rate, its BatchNorm statistics re-estimated, and the model's training loss measured in eval mode on a fixed set of
training images (`calibrate.eval_loss`): a label-aware measure whose cost is bounded by that set, not by the
validation split, and that needs no NMS. The cut is simulated, not made: every parameter slice the cut would remove
is zeroed (`group_sparsity.channel_masks`), which computes exactly what the pruned model computes (a channel whose
BatchNorm weight and bias are zero outputs SiLU(0) = 0, and its consumers' columns are zero too), and the weights are
put back after each layer. One trace of the graph serves the whole scan, so each layer costs two passes over the
images (re-estimation and loss) and no copy or re-trace of the model; on YOLOv8n at 128 px the copy and re-trace per
layer had cost 87 s against 52 s for the whole scan. Layers whose cut raises the loss more keep more
(`widths.allocate_ratios`), for the same share of channels removed overall.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics.utils import TQDM, colorstr

from ultralytics_prune.channels.calibrate import images_within_budget
from ultralytics_prune.channels.group_pruner import GroupPruner, channel_masks
from ultralytics_prune.channels.widths import allocate_ratios, kept_width
from ultralytics_prune.files import read_csv, write_csv

# loss rises below this share of the unpruned model's loss count alike: the scan's 64 images measure small drops with
# about that much noise. Two disjoint sets of 64 images (converged YOLOv8n, hard and large-object sets) gave per-layer
# ratios 0.21 / 0.09 apart on average with the median drop as the only floor, 0.05 / 0.03 with this one; the first cut
# kept the same mAP (0.454 / 0.623 -> 0.454 / 0.619), both cuts back to back 0.443 / 0.597 -> 0.438 / 0.616
NOISE_FLOOR = 0.005
SENSITIVITY_IMAGES = 64  # training images the scan measures each layer's cut on, at most
MIN_SCAN_IMAGES = 8  # and at least, whatever the budget


def scan_images(macs_per_image: float, layers: int, device_type: str) -> int:
    """How many training images the scan measures each layer on: `SENSITIVITY_IMAGES` where the budget of the device
    allows it (every model up to YOLOv8n at 320 px on a CPU), fewer for large models and images, never under
    `MIN_SCAN_IMAGES` (YOLOv8n at 640 px on a CPU: 16; yolov8s: 8). Deterministic for a model, image size and device
    type, so a run's widths do not depend on how fast the machine is."""
    return images_within_budget(2 * layers * macs_per_image, device_type, SENSITIVITY_IMAGES, MIN_SCAN_IMAGES)


def scan_sensitivity(
    model: nn.Module,
    pruner: GroupPruner,
    originals: dict[str, int],
    rate: float,
    round_to: int,
    evaluate: Callable[[nn.Module], float],
) -> list[dict]:
    """Cut each group of `model` alone to `rate` (zeroed, not removed) and evaluate it; `model` is left as it was.

    Args:
        model (nn.Module): The unpruned model; its weights and statistics are restored after each layer.
        pruner (GroupPruner): The group pruner of `model` (scored, nothing removed), with the run's criterion.
        originals (dict[str, int]): Original width of each group's root, by name.
        rate (float): The ratio each group is pruned to.
        round_to (int): Width rounding, as in the run.
        evaluate (Callable): The loss of the model with one group cut (it may re-estimate BatchNorm statistics first).

    Returns:
        (list[dict]): One row per group: `layer`, `channels`, `kept`, `loss` with that layer pruned alone.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    rows = []
    for i, name in enumerate(TQDM(pruner.names, desc=colorstr("prune: ") + "sensitivity scan")):
        widths = pruner.widths()
        widths[i] = kept_width(originals[name], rate, round_to, widths[i])
        try:
            with torch.no_grad():
                for param, mask in channel_masks(model, pruner.touched(pruner.choose(widths))).items():
                    params[param].mul_(1 - mask.to(params[param]))
            rows.append({"layer": name, "channels": originals[name], "kept": widths[i], "loss": evaluate(model)})
        finally:  # weights and the statistics `evaluate` re-estimated, also when it fails
            model.load_state_dict(saved)
    return rows


def sensitivity_ratios(file: Path, rate: float, scan: Callable[[], tuple[float, list[dict]]]) -> dict[str, float]:
    """The per-layer ratios of a run: read from `file` when a scan was saved there (resume), else scanned and saved.

    Args:
        file (Path): `sensitivity.csv` of the run.
        rate (float): The run's overall ratio.
        scan (Callable): The unpruned model's loss and the rows of `scan_sensitivity` for this run.

    Returns:
        (dict[str, float]): Ratio of each layer, by its root's name.
    """
    if not file.exists():
        base_loss, rows = scan()
        drops = [r["loss"] - base_loss for r in rows]
        ratios = allocate_ratios([r["channels"] for r in rows], drops, rate, floor=NOISE_FLOOR * base_loss)
        rows = [{**r, "drop": d, "ratio": q} for r, d, q in zip(rows, drops, ratios)]
        write_csv(rows, file)
    # the ratios as saved (6 significant digits), also in the run that scanned: a resumed run reads them from the file
    return {r["layer"]: float(r["ratio"]) for r in read_csv(file)}
