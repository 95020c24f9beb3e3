"""Every plot a run leaves behind, drawn under Ultralytics' `plt_settings` (the caller's backend is restored)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ultralytics.utils import plt_settings

from ultralytics_prune.files import atomic_path
from ultralytics_prune.measure.gamma import HIST_EDGES

HIST_CENTERS = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2


@plt_settings()
def plot_prune_results(rows: list[dict], file: str | Path, metric: str = "mAP50-95") -> Path:
    """Plot the task's mAP50-95 against MACs and against the measured speed-up, parent and every step, and the
    shares of MACs and parameters left per step.

    Args:
        rows (list[dict]): The rows of `<mode>_results.csv`, row 0 the unpruned model.
        file (str | Path): PNG path to write.
        metric (str): The task's own mAP50-95 column (e.g. `mask_mAP50-95`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [int(r["step"]) for r in rows]
    pre, post = [r[f"{metric}_pre"] for r in rows], [r[f"{metric}_post"] for r in rows]
    lowest = [r.get(f"{metric}_lowest", float("nan")) for r in rows]  # a fine-tune's lowest epoch: a re-learn shows
    speedups = [r.get("speedup", float("nan")) for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6), tight_layout=True)
    for a, xs, label in ((ax[0], [r["macs_G"] for r in rows], "GMACs"),
                         (ax[1], speedups, "measured speed-up, PyTorch CPU (in turns with the parent)")):  # fmt: skip
        a.plot(xs[1:], pre[1:], "o", mfc="none", color="tab:orange", label=f"{metric} right after the cut")
        a.plot(xs[1:], lowest[1:], "v", color="tab:red", label=f"{metric} at the fine-tune's lowest epoch")
        a.plot(xs, post, "o-", color="tab:blue", label=f"{metric} after fine-tuning")
        a.plot(xs[:1], post[:1], "*", ms=16, color="black", label="parent")
        for x, y, step in zip(xs, post, steps):
            a.annotate(str(step), (x, y), textcoords="offset points", xytext=(5, 5))
        a.set_xlabel(label)
        a.set_ylabel(metric)
        a.legend(fontsize=8)
    ax[0].invert_xaxis()  # pruning goes right
    ax[0].set_title(f"{metric} against MACs (numbers: steps)")
    ax[1].set_title(f"{metric} against speed-up")
    ax[2].plot(steps, [r["macs_G"] / rows[0]["macs_G"] for r in rows], "o-", label="MACs left")
    ax[2].plot(steps, [r["params_M"] / rows[0]["params_M"] for r in rows], "s-", label="parameters left")
    ax[2].plot(steps, [1 / s for s in speedups], "^-", label="latency left (PyTorch CPU)")
    ax[2].set_xlabel("step (0 = parent)")
    ax[2].set_title("share of the parent's")
    ax[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[2].legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    return _save(fig, file)


@plt_settings()
def plot_gamma_heatmap(histograms: Sequence[np.ndarray], file: str | Path, title: str = "BatchNorm |gamma|") -> Path:
    """Plot one |gamma| histogram per epoch as a heat-map (epochs on x, log10 |gamma| on y) and the end curves.

    Args:
        histograms (Sequence[np.ndarray]): Counts per epoch from `gamma.gamma_histogram`.
        file (str | Path): PNG path to write.
        title (str): Figure title.
    """
    import matplotlib.pyplot as plt

    data = np.stack(histograms, 1).astype(float)  # (bins, epochs)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5), tight_layout=True)
    extent = (0.5, data.shape[1] + 0.5, HIST_EDGES[0], HIST_EDGES[-1])
    im = ax0.imshow(np.log1p(data), aspect="auto", origin="lower", cmap="viridis", extent=extent)
    ax0.set_xlabel("epoch")
    ax0.set_ylabel("log10 |gamma|")
    ax0.set_title(f"{title} per epoch (colour: log(1 + channels))")
    fig.colorbar(im, ax=ax0)
    for i in sorted({0, data.shape[1] - 1}):
        ax1.plot(HIST_CENTERS, data[:, i], label=f"epoch {i + 1}", linewidth=2)
    ax1.set_xlabel("log10 |gamma|")
    ax1.set_ylabel("channels")
    ax1.set_title("first and last epoch")
    ax1.legend()
    return _save(fig, file)


@plt_settings()
def plot_gamma_before_after(histograms: dict[str, np.ndarray], file: str | Path, threshold: float = 0.0) -> Path:
    """Plot |gamma| histograms (log10 axis) of the prunable BatchNorms, one curve per stage of a slim run.

    Args:
        histograms (dict[str, np.ndarray]): Stage name -> counts from `gamma.gamma_histogram`.
        file (str | Path): PNG path to write.
        threshold (float): The |gamma| threshold used, drawn as a vertical line when > 0.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), tight_layout=True)
    for label, counts in histograms.items():
        ax.step(HIST_CENTERS, counts, where="mid", label=f"{label} ({int(np.sum(counts))} channels)", linewidth=2)
    if threshold > 0:
        ax.axvline(np.log10(threshold), color="k", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("log10 |gamma|")
    ax.set_ylabel("channels")
    ax.set_title("BatchNorm |gamma| of the prunable layers")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, file)


def _save(fig, file: str | Path) -> Path:
    """Write `fig` to `file` (a temp file, then renamed: a reader never sees half a picture) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(file, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return Path(file)


@plt_settings()
def plot_benchmark(rows: list[dict], file: str | Path) -> Path:
    """Plot mAP50-95 against MACs and against measured latency, one labelled point per benchmark row.

    Args:
        rows (list[dict]): Rows with `row`, `macs_G`, `onnx_ms` and `mAP50-95` (rows with an `error` are skipped).
        file (str | Path): PNG path to write.
    """
    import matplotlib.pyplot as plt

    good = [r for r in rows if not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), tight_layout=True)
    for ax, key, label in zip(axes, ("macs_G", "onnx_ms"), ("GMACs", "onnxruntime CPU latency (ms)")):
        for r in good:
            ax.scatter(r[key], r["mAP50-95"], s=60)
            ax.annotate(r["row"], (r[key], r["mAP50-95"]), textcoords="offset points", xytext=(6, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against compute")
    axes[1].set_title("accuracy against measured latency")
    return _save(fig, file)


@plt_settings()
def plot_sensitivity(rows: list[dict], file: str | Path, rate: float) -> Path:
    """Bars of the loss added by pruning each layer alone, and the ratio each layer was given for the run.

    Args:
        rows (list[dict]): Rows of `sensitivity.csv` (`layer`, `drop`, `ratio`).
        file (str | Path): PNG path to write.
        rate (float): The run's overall ratio, drawn as a reference line.
    """
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.3), 7), sharex=True, tight_layout=True)
    ax0.bar(x, [r["drop"] for r in rows], color="tab:red")
    ax0.set_ylabel("training loss added, pruned alone")
    ax0.set_title(f"per-layer sensitivity at rate {rate:g} (no fine-tuning)")
    ax1.bar(x, [r["ratio"] for r in rows], color="tab:blue")
    ax1.axhline(rate, color="k", linestyle="--", label=f"uniform rate {rate:g}")
    ax1.set_ylabel("share removed in the run")
    ax1.legend()
    ax1.set_xticks(x, [r["layer"].replace("model.", "") for r in rows], rotation=90, fontsize=7)
    for a in (ax0, ax1):
        a.grid(alpha=0.3, axis="y")
    return _save(fig, file)


@plt_settings()
def plot_latency(rows: list[dict], file: str | Path) -> Path:
    """Median latency per backend, one bar per model, with the realization written over each bar but the first.

    Args:
        rows (list[dict]): Rows with `backend`, `model`, `median_ms` and `realization` (see tools/bench_latency.py).
        file (str | Path): PNG path to write.
    """
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r["backend"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(8, 2.5 * len(backends)), 4.5), tight_layout=True)
    for j, model in enumerate(models):
        mine = {r["backend"]: r for r in rows if r["model"] == model}
        xs = [i + j * width for i, b in enumerate(backends) if b in mine]
        ys = [mine[b]["median_ms"] for b in backends if b in mine]
        ax.bar(xs, ys, width, label=model)
        if j:
            for x, b in zip(xs, (b for b in backends if b in mine)):
                ax.annotate(f"x{mine[b]['realization']:.2f}", (x, mine[b]["median_ms"]), ha="center", va="bottom")
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(backends))], backends, rotation=15)
    ax.set_ylabel("median latency (ms), batch 1")
    ax.set_title("latency per backend (numbers: realization = speed-up / MACs factor)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, file)


@plt_settings()
def plot_latency_table(rows: list[dict], file: str | Path, backend: str, top: int = 30) -> Path:
    """Horizontal bars of the slowest convolutions' time at full width and at the narrowest cut measured (what pruning
    cannot take away), and of the fixed part no convolution owns.

    Args:
        rows (list[dict]): `LatencyTable.rows`: `layer`, `weights`, `ms`, `share`, one row per layer and width
            measured, with the `(fixed)` and `(total)` rows.
        file (str | Path): PNG path to write.
        backend (str): Where the table was measured, for the title.
        top (int): How many of the slowest layers to show.
    """
    import matplotlib.pyplot as plt

    points = defaultdict(list)
    for r in rows:
        if not str(r["layer"]).startswith("("):
            points[r["layer"]].append(r)
    full = {n: max(p, key=lambda r: r["weights"]) for n, p in points.items()}
    narrow = {n: min(p, key=lambda r: r["weights"]) for n, p in points.items()}
    fixed = next(r for r in rows if r["layer"] == "(fixed)")
    total = next(r for r in rows if r["layer"] == "(total)")["ms"]
    names = sorted(full, key=lambda n: -full[n]["ms"])[:top]
    y = range(len(names) + 1)
    fig, ax = plt.subplots(figsize=(9, 0.25 * len(y) + 1.8), tight_layout=True)
    ax.barh(y, [fixed["ms"]] + [full[n]["ms"] for n in names], color=["tab:gray"] + ["tab:blue"] * len(names),
            alpha=0.45, label="at full width")  # fmt: skip
    ax.barh(list(y)[1:], [narrow[n]["ms"] for n in names], color="tab:blue",
            label="at the narrowest cut measured (what pruning does not take away)")  # fmt: skip
    ax.set_yticks(y, ["no layer (decode, concat, reorders)"] + names)
    ax.invert_yaxis()
    for i, r in enumerate([fixed] + [full[n] for n in names]):
        ax.annotate(f" {100 * r['share']:.1f}%", (r["ms"], i), va="center", fontsize=8)
    ax.set_xlabel("ms per image")
    ax.set_title(f"latency table on {backend}: {total:.2f} ms per image\n{len(full)} convolutions take "
                 f"{100 * (1 - fixed['share']):.0f}% of it; the slowest {len(names)} shown")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, file)
