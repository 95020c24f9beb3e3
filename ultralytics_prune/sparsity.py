"""What Network Slimming watches: statistics and histograms of the BatchNorm scale factors (gamma)."""

from __future__ import annotations

from pathlib import Path
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


def plot_gamma_heatmap(histograms: Sequence[np.ndarray], file: str | Path, title: str = "BatchNorm |gamma|") -> Path:
    """Plot one histogram per epoch as a heat-map (epochs on x, log10 |gamma| on y) plus the last epoch's curve.

    Args:
        histograms (Sequence[np.ndarray]): Counts per epoch from `gamma_histogram`.
        file (str | Path): PNG path to write.
        title (str): Figure title.

    Returns:
        (Path): The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.stack(histograms, 1).astype(float)  # (bins, epochs)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5), tight_layout=True)
    im = ax0.imshow(
        np.log1p(data),
        aspect="auto",
        origin="lower",
        cmap="viridis",
        extent=(0.5, data.shape[1] + 0.5, HIST_EDGES[0], HIST_EDGES[-1]),
    )
    ax0.set_xlabel("epoch")
    ax0.set_ylabel("log10 |gamma|")
    ax0.set_title(f"{title} per epoch (colour: log(1 + channels))")
    fig.colorbar(im, ax=ax0)
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    for i in sorted({0, data.shape[1] - 1}):
        ax1.plot(centers, data[:, i], label=f"epoch {i + 1}", linewidth=2)
    ax1.set_xlabel("log10 |gamma|")
    ax1.set_ylabel("channels")
    ax1.set_title("first and last epoch")
    ax1.legend()
    file = Path(file)
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file
