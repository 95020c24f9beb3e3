"""DepGraph iterative pruning (`yolo prune`, torch-pruning): what each step of the loop removes, and by which measure.

What is important (a torch-pruning importance criterion) is kept apart from how many channels each layer keeps
(`widths`, `sensitivity`) and from how they are removed (`group_pruner.GroupPruner`, on the dependency graph).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from copy import deepcopy
from functools import cached_property

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import Attention
from ultralytics.utils import LOGGER

from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.channels.attention import prune_attention
from ultralytics_prune.channels.calibrate import (
    eval_loss,
    loss_gradients,
    recalibrate_batchnorm,
    squared_gradients,
    training_batches,
    training_images,
)
from ultralytics_prune.channels.graph import held_layers, hold_modules
from ultralytics_prune.channels.group_pruner import GroupPruner, build_importance
from ultralytics_prune.channels.reconstruct import (
    ChannelLedger,
    rebuild_images,
    rebuilt_summary,
    reconstruct_consumers,
)
from ultralytics_prune.channels.sensitivity import scan_images, scan_sensitivity, sensitivity_ratios
from ultralytics_prune.channels.width_policy import (
    MAX_RATIO,
    GlobalWidths,
    LatencyAwareWidths,
    SensitivityWidths,
    UniformWidths,
    WidthPolicy,
)
from ultralytics_prune.channels.widths import step_ratios
from ultralytics_prune.files import read_csv
from ultralytics_prune.measure.latency_table import channel_costs
from ultralytics_prune.measure.macs_model import MacsModel, widths_for_macs
from ultralytics_prune.measure.plots import plot_sensitivity
from ultralytics_prune.measure.report import count_macs_params, example_input
from ultralytics_prune.recipes.group_sparsity import SparseCuts
from ultralytics_prune.recipes.latency_goal import LatencyGoals
from ultralytics_prune.recipes.loop import PruneRun

RATIO_INCREMENT = 0.025  # where a goal is still missed after the computed cut, the run ratio rises by this each time
ROW_ROUNDING = 1e-5  # the rows hold 6 significant digits (as saved, as a resumed run reads them): a goal of the
# unpruned model's MACs read from them is met by that model


class DepGraphPruner(LatencyGoals, SparseCuts, PruneRun):
    """`yolo prune`: torch-pruning's DepGraph structured pruning, iterative with fine-tuning.

    Each step removes channels so that the cumulative share removed follows a linear schedule up to `rate`, or, with
    `target_macs` / `speedup`, so that MACs fall geometrically to that goal; the loop around it validates, fine-tunes
    for `epochs` and stops when the task's mAP50-95 falls more than `max_map_drop` below the start. With
    `target_latency` / `speedup_by=latency` the goal is the latency measured on `latency_backend`. With
    `sensitivity=True` (the default) a scan before the first step gives each layer its own share of `rate` (see
    `sensitivity`); with `latency_aware=True` one ranking of importance per millisecond on `latency_backend` does
    (see `latency_table`).
    """

    mode = "prune"
    result_name = "pruned"

    @property
    def n_steps(self) -> int:
        """`iterative_steps`."""
        return self.args.iterative_steps

    # what a step's cut leaves for the row `measure` makes of it (read once, then reset)
    ledger: ChannelLedger | None = None  # what the step's cuts removed, kept while `reconstruct` is on

    def remove(self, step: int) -> dict:
        """This step's cut (see `cut`); with `sparse_epochs`, made after training its channels toward zero; with
        `reconstruct`, the layers the cut fed less rebuilt after it to give the outputs of the model before the step."""
        self.ledger = ChannelLedger() if self.args.reconstruct else None
        done = self.sparse_cut(step) if self.args.sparse_epochs else self.cut(step)
        if self.ledger is not None and self.ledger.reference is not None:  # BatchNorm re-estimated after, not before
            n = self.args.reconstruct if self.args.reconstruct >= 0 else rebuild_images(
                self.rows[0]["macs_G"] * 1e9, len(self.original_widths), next(self.model.parameters()).device.type)
            start = time.perf_counter()
            errors = reconstruct_consumers(self.ledger.reference, self.model, self.ledger,
                                           list(training_images(ultralytics_args(self.args), n)),
                                           desc=f"{self.prefix}step {step}: rebuilding")  # fmt: skip
            seconds = time.perf_counter() - start
            LOGGER.info(f"{self.prefix}step {step}: {rebuilt_summary(errors, n)} in {seconds:.0f} s ('reconstruct=0' "
                        f"skips it)")  # fmt: skip
        self.ledger = None
        return done

    def cut(self, step: int) -> dict:
        """Remove channels up to this step's cumulative ratio, or down to this step's latency or MACs goal.

        Goals are spaced geometrically: step s of n aims at base * (goal / base) ** (s / n).
        """
        fraction = step / self.n_steps
        if (goal := self.latency_goal()) is not None:
            return self.prune_to_latency(goal**fraction)
        if (goal := self.macs_goal()) is not None:
            base = self.rows[0]["macs_G"] * 1e9
            return self.prune_to_macs(base * (goal / base) ** fraction)
        return self.prune_to(step_ratios(self.args.rate, self.n_steps)[step])

    def unpruned_model(self) -> nn.Module:
        """The model before any cut: the run's own before step 1 is cut (row 0 only), else the input loaded again."""
        return self.model if not self.rows[1:] else self.input_model()

    @cached_property
    def original_widths(self) -> dict[str, int]:
        """Output width of every convolution of the input model (block twins swapped in), by module name."""
        return {n: m.out_channels for n, m in self.unpruned_model().named_modules() if isinstance(m, nn.Conv2d)}

    def prune_to(self, ratio: float) -> dict:
        """Remove channels so that every prunable layer keeps its share `1 - ratio` of its original width.

        With `global_pruning` one ranking over all layers decides how many each keeps (same total share); with
        `latency_aware` that ranking is of importance per millisecond (see `latency_table`).
        Returns the row entries: `ratio` asked and `removed`, the share of prunable channels really removed.
        """
        pruner = self.scored_pruner()
        return self.after_cut(pruner, pruner.prune(self.width_policy(pruner)(ratio)), ratio)

    def scored_pruner(self) -> GroupPruner:
        """The group pruner of `self.model`, scored; the gradients a criterion reads (taylor, hessian) filled first."""
        if self.args.importance == "taylor":
            loss_gradients(self.model, ultralytics_args(self.args))
        elif self.args.importance == "hessian":
            squared_gradients(self.model, ultralytics_args(self.args))
        return self.make_pruner(self.model)

    def width_policy(self, pruner: GroupPruner) -> WidthPolicy:
        """The run's width policy for the groups of `pruner` (see `width_policy`): one ranking of importance per
        millisecond (`latency_aware`) or of importance (`global_pruning`), the sensitivity shares, or uniform."""
        given = (pruner.names, pruner.scores, [self.original_widths[name] for name in pruner.names], self.args.round_to)
        if self.args.latency_aware:
            return LatencyAwareWidths(*given, channel_costs(self.latency_table, self.model, pruner.graph, pruner.groups))
        if self.args.global_pruning:
            return GlobalWidths(*given)
        if self.sensitivity_shares is not None:
            return SensitivityWidths(*given, self.sensitivity_shares, self.args.rate)
        return UniformWidths(*given)

    def raise_cut(self, done: dict, met: Callable[[dict], bool]) -> dict:
        """The search both goals end with: raise the run ratio by `RATIO_INCREMENT` at a time (cutting further each
        time) until `met(done)` or the ratio reaches `MAX_RATIO`; the last cut's row entries."""
        while not met(done) and done["ratio"] < MAX_RATIO:
            done = self.prune_to(min(MAX_RATIO, done["ratio"] + RATIO_INCREMENT))
        return done

    def after_cut(self, pruner: GroupPruner, widths: list[int], ratio: float) -> dict:
        """Cut the attention heads too (`attention=prune`), drop the gradients; the row entries of `prune_to`."""
        originals = [self.original_widths[name] for name in pruner.names]
        if self.args.attention == "prune":
            for attn in (m for m in self.model.modules() if isinstance(m, Attention)):
                prune_attention(attn, min(ratio, 0.95), self.args.round_to)
        self.model.zero_grad(set_to_none=True)
        removed = 1 - sum(widths) / max(1, sum(originals))
        return {"ratio": ratio, "removed": removed}

    def make_pruner(self, model: nn.Module) -> GroupPruner:
        """The group pruner of `model` with this run's criterion and held layers."""
        held = held_layers(model, hold_modules(model, self.args.hold))
        return GroupPruner(model, build_importance(self.args.importance), held, max(64, self.args.imgsz),
                           self.args.round_to, self.ledger)  # fmt: skip

    @cached_property
    def sensitivity_shares(self) -> dict[str, float] | None:
        """Each layer's share of `rate` from the sensitivity scan (run once, or read back), None without the scan."""
        if not self.args.sensitivity or not self.args.rate:
            return None
        file = self.save_dir / "sensitivity.csv"
        scanning = not file.exists()
        shares = sensitivity_ratios(file, self.args.rate, self.scan)
        if scanning and self.args.plots and shares:
            plot_sensitivity(read_csv(file), file.with_suffix(".png"), self.args.rate)
        return shares

    def max_ratio(self) -> float:
        """The run ratio past which the run's width policy cuts no further (see `SensitivityWidths.top`)."""
        shares = self.sensitivity_shares if not (self.args.latency_aware or self.args.global_pruning) else None
        return SensitivityWidths.top(shares, self.args.rate) if shares else MAX_RATIO

    def scan(self) -> tuple[float, list[dict]]:
        """The unpruned model's loss and the sensitivity scan of it (see `sensitivity`), on up to 64 training images
        (`scan_images`) loaded once (BatchNorm re-estimated on them after each cut when `recalibrate` is on)."""
        model = self.unpruned_model()
        args, pruner = ultralytics_args(self.args), self.make_pruner(model)
        macs, device = count_macs_params(model, self.args.imgsz)[0], next(model.parameters()).device.type
        batches = list(training_batches(args, scan_images(macs, len(pruner.names), device)))
        n = sum(len(b["img"]) for b in batches)
        layers = len(pruner.names)
        LOGGER.info(f"{self.prefix}sensitivity scan: {layers} layers x {n} training images, two passes each "
                    f"({2 * layers * n * macs / 1e12:.2g} TMACs); 'sensitivity=False' skips it")  # fmt: skip
        images = [b["img"].float() / 255 for b in batches] if self.args.recalibrate else []

        def evaluate(copy: nn.Module) -> float:
            if images:
                recalibrate_batchnorm(copy, images)
            return eval_loss(copy, args, batches)

        rows = scan_sensitivity(model, pruner, self.original_widths, self.args.rate, self.args.round_to, evaluate)
        # the unpruned model measured the same way: re-estimating its statistics alone raised the loss on these images
        # by about 8 (132.7 -> 140.9 on the hard set's YOLOv8n), which would otherwise count as every layer's cost
        return evaluate(deepcopy(model)), rows

    def prune_to_macs(self, target_macs: float) -> dict:
        """Cut to the widest widths of the run's width policy whose MACs are at most `target_macs`.

        The widths come from one trace of the model (`macs_model`): the ratio is searched on the MACs predicted for
        each, and where rounding makes many groups narrow at once, they narrow one by one, least important channels
        first, until the goal is met. Should the cut model still count more (what the prediction leaves out, e.g.
        attention products), the ratio then rises in small steps.
        """
        done = {"ratio": float(self.rows[-1]["ratio"]), "removed": float(self.rows[-1].get("removed", 0.0))}
        total = count_macs_params(self.model, self.args.imgsz)[0]
        if total <= target_macs * (1 + ROW_ROUNDING):
            return done
        pruner = self.scored_pruner()
        macs = MacsModel(self.model, pruner, total, example_input(self.model, self.args.imgsz))
        order = [torch.sort(score).values for score in pruner.scores]
        current = pruner.widths()

        def cost(group: int, wide: int, narrow: int) -> float:  # the importance a move removes, against its group's
            removed = order[group][current[group] - wide : current[group] - narrow]
            return float(removed.mean() / order[group].mean().clamp_min(1e-12))

        policy = self.width_policy(pruner)
        widths, ratio = widths_for_macs(policy, macs, target_macs, done["ratio"], policy.max_ratio, cost)
        done = self.after_cut(pruner, pruner.prune(widths), ratio)
        return self.raise_cut(done, lambda _: count_macs_params(self.model, self.args.imgsz)[0] <= target_macs)

    def macs_goal(self) -> float | None:
        """Final MACs goal from `target_macs` (GMACs) or `speedup`, or None when `rate` rules."""
        base = self.rows[0]["macs_G"] * 1e9
        if self.args.target_macs:
            return min(self.args.target_macs * 1e9, base)
        if self.args.speedup:
            return base / self.args.speedup
        return None
