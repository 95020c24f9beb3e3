"""What Network Slimming watches: statistics and histograms of the BatchNorm scale factors (gamma), logged by sparsity
training (`yolo train sr=...`) and plotted by `yolo slim`."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

# log10(|gamma|) bin edges of the histogram; values outside are clipped into the first/last bin
HIST_EDGES = np.linspace(-4.0, 1.0, 51)


def gamma_values(bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """Return |gamma| of all channels of `bns` as one float32 CPU tensor."""
    if not bns:
        return torch.zeros(0)
    return torch.cat([bn.weight.detach().abs().float().flatten().cpu() for bn in bns])


def gamma_stats(bns: Sequence[nn.BatchNorm2d]) -> dict[str, float]:
    """Summary of |gamma| for results.csv: share of channels below 1e-2 and 1e-3, median and mean.

    Keys start with 'gamma/' so Ultralytics' results.png (loss and metric columns only) is unchanged.
    """
    g = gamma_values(bns)
    if g.numel() == 0:
        return {"gamma/lt1e-2": 0.0, "gamma/lt1e-3": 0.0, "gamma/median": 0.0, "gamma/mean": 0.0}
    return {
        "gamma/lt1e-2": (g < 1e-2).float().mean().item(),
        "gamma/lt1e-3": (g < 1e-3).float().mean().item(),
        "gamma/median": g.median().item(),
        "gamma/mean": g.mean().item(),
    }


def gamma_histogram(bns: Sequence[nn.BatchNorm2d]) -> np.ndarray:
    """Counts of log10(|gamma|) over `HIST_EDGES` (values out of range go to the outer bins)."""
    g = gamma_values(bns).numpy()
    logg = np.clip(np.log10(np.maximum(g, 1e-12)), HIST_EDGES[0], HIST_EDGES[-1] - 1e-9)
    return np.histogram(logg, bins=HIST_EDGES)[0]
