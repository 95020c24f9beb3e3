"""Latency goals of `yolo prune` (`target_latency`, `speedup_by=latency`) and the per-layer latency table of
`latency_aware`, as a part of `depgraph.DepGraphPruner`.

Latency falls no faster than MACs on the backends measured here (convolution time follows MACs, the rest of the graph
does not shrink), so a latency goal first cuts, untimed, to `LATENCY_HEADROOM` times its share of the MACs; each timed
increment after that costs an export and a measurement, in turns with the unpruned model.
"""

from __future__ import annotations

from copy import deepcopy
from functools import cached_property

import torch.nn as nn
from ultralytics.utils import LOGGER

from ultralytics_prune.channels.graph import held_layers
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.channels.width_policy import MAX_RATIO
from ultralytics_prune.channels.widths import kept_width
from ultralytics_prune.measure.latency_table import SWEEP, LatencyTable, cache_file, read_cached, write_cached
from ultralytics_prune.measure.latency_target import LatencyProbe
from ultralytics_prune.measure.plots import plot_latency_table

LATENCY_HEADROOM = 1.15  # a latency goal first cuts to this many times its share of the MACs, untimed


class LatencyGoals:
    """The latency side of `DepGraphPruner`: the goal, its probe and timed search, the latency columns of a row and the
    latency table. Reads the run's `args`, `rows`, `model`, `save_dir`, `prefix` and calls its `prune_to_macs`,
    `raise_cut` and `input_model`."""

    cut_latency: tuple[float, float] | None = None  # (model, unpruned) ms as `prune_to_latency` last timed the cut

    @property
    def latency_column(self) -> str | None:
        """The CSV column of the backend latency, when a latency goal is set (e.g. `onnxruntime_ms`)."""
        wanted = self.args.target_latency or (self.args.speedup and self.args.speedup_by == "latency")
        return f"{self.args.latency_backend}_ms" if wanted else None

    @cached_property
    def latency_probe(self) -> LatencyProbe:
        """Times models against the unpruned one on `latency_backend` (made once, from the input model).

        Made when row 0 is measured, or, resumed, first used inside a step's timed cut with `self.model` already cut:
        so any row on record means the input model, not `unpruned_model`'s row-1 rule."""
        return LatencyProbe(self.model if not self.rows else self.input_model(), self.args.imgsz,
                            self.args.latency_backend)  # fmt: skip

    def measure(self, model: nn.Module) -> dict:
        """The usual columns, plus, with a latency goal, the backend latency and the speed-up over the unpruned
        model measured in the same interleaved rounds (`<backend>_speedup`).

        The step's cut was timed last by `prune_to_latency`; fine-tuning changes no shape, so that timing is used.
        """
        row = super().measure(model)
        if self.latency_column:
            timed, self.cut_latency = self.cut_latency, None
            model_ms, reference_ms = timed or self.latency_probe.measure(model)
            row[self.latency_column] = model_ms
            row[f"{self.args.latency_backend}_speedup"] = reference_ms / model_ms
        return row

    def latency_goal(self) -> float | None:
        """Final goal as a share of the unpruned model's latency, from `target_latency` (ms, against the latency
        measured for row 0) or from `speedup` with `speedup_by=latency`; None without a latency goal."""
        if not self.latency_column:
            return None
        if self.args.target_latency:
            return self.args.target_latency / self.rows[0][self.latency_column]
        return 1 / self.args.speedup

    def prune_to_latency(self, share: float) -> dict:
        """Raise the cumulative ratio in small increments until the model runs in at most `share` of the unpruned
        model's time on the backend (timed interleaved with it).

        Latency falls no faster than MACs on the backends measured here (convolution time follows MACs, the rest of
        the graph does not shrink), so the model is first cut, without timing, to `LATENCY_HEADROOM` times that
        share of the MACs; each timed increment after that costs an export and a measurement.
        """
        done = self.prune_to_macs(min(1.0, share * LATENCY_HEADROOM) * self.rows[0]["macs_G"] * 1e9)

        def fast_enough(done: dict) -> bool:
            model_ms, reference_ms = self.cut_latency = self.latency_probe.measure(self.model)
            LOGGER.info(f"{self.prefix}{self.args.latency_backend} {model_ms:.2f} ms, {model_ms / reference_ms:.3f}x "
                        f"the unpruned model's, with {done['ratio']:.1%} of the channels removed (goal {share:.3f}x)")
            return model_ms / reference_ms <= share

        done = self.raise_cut(done, fast_enough)
        model_ms, reference_ms = self.cut_latency
        if model_ms / reference_ms > share:
            LOGGER.warning(f"{self.prefix}{share:.3f}x the unpruned latency on {self.args.latency_backend} not "
                           f"reached: {model_ms / reference_ms:.3f}x with {MAX_RATIO:.0%} of the channels removed")
        return done

    @cached_property
    def latency_table(self) -> LatencyTable:
        """The unpruned model's per-layer latency on `latency_backend`, at full width and at the uniform cuts of
        `SWEEP`: read back from this run's `latency_table.csv` on resume, else from the cache of earlier runs of the
        same architecture, image size and backend on this machine, else measured (and cached). Written to the run
        with its plot `latency_table.png`."""
        file, backend = self.save_dir / "latency_table.csv", self.args.latency_backend
        if file.exists():
            return LatencyTable.load(file)
        model = self.unpruned_model()
        cached = cache_file(model, self.args.imgsz, backend, self.args.round_to)
        if (table := read_cached(cached)) is not None:
            LOGGER.info(f"{self.prefix}latency table on {backend} read from {cached} (an earlier run's, same "
                        f"architecture and image size on this machine; delete it to measure again)")  # fmt: skip
        else:
            table = LatencyTable.measure([model, *self.uniform_cuts(model)], self.args.imgsz, backend)
            write_cached(table, cached)
        table.save(file)
        if self.args.plots:
            plot_latency_table(table.rows(), file.with_suffix(".png"), backend)
        top = ", ".join(f"{n} {table.full_ms(n):.2f}" for n in sorted(table.layers, key=table.full_ms)[::-1][:3])
        LOGGER.info(f"{self.prefix}latency table on {backend}: {table.total_ms:.2f} ms, slowest layers {top} ms, "
                    f"{table.fixed_ms:.2f} ms in no layer; see {file}")  # fmt: skip
        return table

    def uniform_cuts(self, model: nn.Module) -> list[nn.Module]:
        """Copies of `model` with every prunable layer cut to each narrower share of `SWEEP` (the latency table's
        widths). Which channels go does not change the time, so the plain L2 criterion picks them; `hold` is not
        applied, so the table is of the architecture alone and serves every run of it (see `cache_file`)."""
        cuts = []
        for keep in SWEEP[1:]:
            cut = deepcopy(model)
            imgsz = max(64, self.args.imgsz)
            pruner = GroupPruner(cut, build_importance("l2"), held_layers(cut), imgsz, self.args.round_to)
            pruner.prune([kept_width(w, 1 - keep, self.args.round_to) for w in pruner.widths()])
            cuts.append(cut)
        return cuts

