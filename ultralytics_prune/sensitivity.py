"""Per-layer sensitivity: how much each prunable layer hurts the model when it alone is pruned, and the ratios it earns.

A scan before the first step (`sensitivity=True`): every prunable group of a copy of the model is pruned alone to the
run's final rate, its BatchNorm statistics re-estimated, and the copy's training loss measured in eval mode on a
fixed set of training images (`calibrate.eval_loss`): a label-aware measure whose cost is bounded by that set, not by
the validation split, and that needs no NMS. Layers whose cut raises the loss more keep more
(`widths.allocate_ratios`), for the same share of channels removed overall.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import torch.nn as nn
from ultralytics.utils import TQDM, colorstr

from ultralytics_prune.group_pruner import GroupPruner
from ultralytics_prune.plots import plot_sensitivity
from ultralytics_prune.report import read_csv, write_csv
from ultralytics_prune.widths import allocate_ratios, kept_width


def scan_sensitivity(
    model: nn.Module,
    make_pruner: Callable[[nn.Module], GroupPruner],
    originals: dict[str, int],
    rate: float,
    round_to: int,
    evaluate: Callable[[nn.Module], float],
) -> list[dict]:
    """Prune each group of a copy of `model` alone to `rate` and evaluate it.

    Args:
        model (nn.Module): The unpruned model (not modified).
        make_pruner (Callable): Builds the `GroupPruner` of a model (the same criterion and held layers as the run).
        originals (dict[str, int]): Original width of each group's root, by name.
        rate (float): The ratio each group is pruned to.
        round_to (int): Width rounding, as in the run.
        evaluate (Callable): The loss of a pruned copy (it may re-estimate BatchNorm statistics first).

    Returns:
        (list[dict]): One row per group: `layer`, `channels`, `kept`, `loss` with that layer pruned alone.
    """
    names = make_pruner(deepcopy(model)).names
    rows = []
    for i, name in enumerate(TQDM(names, desc=colorstr("prune: ") + "sensitivity scan")):
        copy = deepcopy(model)
        pruner = make_pruner(copy)
        widths = pruner.widths()
        widths[i] = kept_width(originals[name], rate, round_to, widths[i])
        pruner.prune(widths)
        rows.append({"layer": name, "channels": originals[name], "kept": widths[i], "loss": evaluate(copy)})
    return rows


def sensitivity_ratios(
    file: Path, rate: float, scan: Callable[[], tuple[float, list[dict]]], plot: bool = True
) -> dict[str, float]:
    """The per-layer ratios of a run: read from `file` when a scan was saved there (resume), else scanned and saved.

    Args:
        file (Path): `sensitivity.csv` of the run.
        rate (float): The run's overall ratio.
        scan (Callable): The unpruned model's loss and the rows of `scan_sensitivity` for this run.
        plot (bool): Also draw `sensitivity.png` beside the CSV.

    Returns:
        (dict[str, float]): Ratio of each layer, by its root's name.
    """
    if file.exists():
        return {r["layer"]: float(r["ratio"]) for r in read_csv(file)}
    base_loss, rows = scan()
    drops = [r["loss"] - base_loss for r in rows]
    ratios = allocate_ratios([r["channels"] for r in rows], drops, rate)
    rows = [{**r, "drop": d, "ratio": q} for r, d, q in zip(rows, drops, ratios)]
    write_csv(rows, file)
    if plot and rows:
        plot_sensitivity(rows, file.with_suffix(".png"), rate)
    return {r["layer"]: r["ratio"] for r in rows}
