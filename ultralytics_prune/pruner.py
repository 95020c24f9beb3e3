"""DepGraph iterative pruning (`yolo prune`, torch-pruning): what each step of the loop removes, and by which measure.

What is important (a torch-pruning importance criterion) is kept apart from how many channels each layer keeps
(`widths`, `sensitivity`) and from how they are removed (`group_pruner.GroupPruner`, on the dependency graph).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from functools import cached_property

import torch
import torch.nn as nn
from ultralytics.nn.modules.block import Attention
from ultralytics.utils import LOGGER

from ultralytics_prune.attention import prune_attention
from ultralytics_prune.calibrate import (
    eval_loss,
    loss_gradients,
    recalibrate_batchnorm,
    squared_gradients,
    training_batches,
    training_images,
)
from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.engine import PruneRun
from ultralytics_prune.graph import held_layers, hold_modules
from ultralytics_prune.group_pruner import GroupPruner, build_importance
from ultralytics_prune.group_sparsity import WEAK_LEFT, GroupSparsity, channel_masks, masked_norm, masks_as_saved
from ultralytics_prune.latency_table import SWEEP, LatencyTable, cache_file, channel_costs, read_cached, write_cached
from ultralytics_prune.latency_target import LatencyProbe
from ultralytics_prune.macs_model import MacsModel, widths_for_macs
from ultralytics_prune.plots import plot_latency_table
from ultralytics_prune.reconstruct import ChannelLedger, reconstruct_consumers
from ultralytics_prune.report import count_macs_params, example_input
from ultralytics_prune.sensitivity import scan_images, scan_sensitivity, sensitivity_ratios
from ultralytics_prune.width_policy import (
    MAX_RATIO,
    GlobalWidths,
    LatencyAwareWidths,
    SensitivityWidths,
    UniformWidths,
    WidthPolicy,
)
from ultralytics_prune.widths import kept_width, step_ratios

LATENCY_HEADROOM = 1.15  # a latency goal first cuts to this many times its share of the MACs, untimed
RATIO_INCREMENT = 0.025  # where a goal is still missed after the computed cut, the run ratio rises by this each time


class DepGraphPruner(PruneRun):
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
    cut_latency: tuple[float, float] | None = None  # (model, unpruned) ms as `prune_to_latency` last timed the cut
    sparse_left: float = float("nan")  # share of the removed channels' norm left after the sparse epochs
    ledger: ChannelLedger | None = None  # what the step's cuts removed, kept while `reconstruct` is on

    def remove(self, step: int) -> dict:
        """This step's cut (see `cut`); with `sparse_epochs`, made after training its channels toward zero; with
        `reconstruct`, the layers the cut fed less rebuilt after it to give the outputs of the model before the step."""
        self.ledger = ChannelLedger() if self.args.reconstruct else None
        done = self.sparse_cut(step) if self.args.sparse_epochs else self.cut(step)
        if self.ledger is not None and self.ledger.reference is not None:
            args, n = ultralytics_args(self.args), self.args.reconstruct
            if self.args.recalibrate:  # the inputs as the cut model sees them once its statistics are re-estimated
                recalibrate_batchnorm(self.model, training_images(args, self.args.recalibrate))
            errors = reconstruct_consumers(self.ledger.reference, self.model, self.ledger, training_images(args, n))
            before, after = (float(torch.tensor([e[i] for e in errors]).median()) if errors else 0.0 for i in (1, 2))
            LOGGER.info(f"{self.prefix}step {step}: {len(errors)} layers the cut fed less rebuilt on {n} training "
                        f"images, output error (median) {before:.1%} -> {after:.1%}")  # fmt: skip
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

    # latency goals -------------------------------------------------------------------------------------------------
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

    def unpruned_model(self) -> nn.Module:
        """The model before any cut: the run's own before step 1 is cut (row 0 only), else the input loaded again."""
        return self.model if not self.rows[1:] else self.input_model()

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
        if self.args.sparse_epochs:  # the step's share of the removed channels' norm left at the cut (row 0: none)
            row["sparse_left"], self.sparse_left = self.sparse_left, float("nan")
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
    def original_widths(self) -> dict[str, int]:
        """Output width of every convolution of the input model (block twins swapped in), by module name."""
        return {n: m.out_channels for n, m in self.unpruned_model().named_modules() if isinstance(m, nn.Conv2d)}

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

    def prune_to(self, ratio: float) -> dict:
        """Remove channels so that every prunable layer keeps its share `1 - ratio` of its original width.

        With `global_pruning` one ranking over all layers decides how many each keeps (same total share); with
        `latency_aware` that ranking is of importance per millisecond (see `latency_table`).
        Returns the row entries: `ratio` asked and `removed`, the share of prunable channels really removed.
        """
        pruner = self.scored_pruner()
        return self.after_cut(pruner, pruner.prune(self.widths_at(pruner, ratio)), ratio)

    def scored_pruner(self) -> GroupPruner:
        """The group pruner of `self.model`, scored; the gradients a criterion reads (taylor, hessian) filled first."""
        if self.args.importance == "taylor":
            loss_gradients(self.model, ultralytics_args(self.args))
        elif self.args.importance == "hessian":
            squared_gradients(self.model, ultralytics_args(self.args))
        return self.make_pruner(self.model)

    def widths_at(self, pruner: GroupPruner, ratio: float) -> list[int]:
        """The width each group of `pruner` keeps when the run as a whole is at `ratio` (see `prune_to`)."""
        return self.width_policy(pruner)(ratio)

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

    def sparse_cut(self, step: int) -> dict:
        """This step's cut after `sparse_epochs` of training that drives exactly its channels toward zero.

        The cut is first made on a copy (any goal: rate, MACs, latency), which gives the width of every group; the
        channels each group then loses are chosen on the model by the run's criterion, trained toward zero with the
        growing L2 penalty of `group_sparsity` (through the same fine-tune as after a cut, in `step<n>/sparse`), and
        removed. How much of their norm is left at the cut goes to the log and to the CSV column `sparse_left`.
        """
        model, ledger = self.model, self.ledger
        self.model, self.ledger = deepcopy(model), None  # a trial cut: the step's own comes after the sparse epochs
        try:
            done = self.cut(step)
            target = {name: m.out_channels for name, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}
        finally:
            self.model, self.ledger = model, ledger
        pruner = self.scored_pruner()
        cuts = pruner.choose([target[name] for name in pruner.names])
        masks = channel_masks(model, pruner.touched(cuts))
        penalty = GroupSparsity(masks_as_saved(model, masks), self.args.sparse_reg, self.args.nbs)
        before = masked_norm(model, masks)
        self.finetune(model, self.save_dir / f"step{step}" / "sparse", self.args.sparse_epochs, setup=penalty.attach)
        left = self.sparse_left = masked_norm(model, masks) / max(before, 1e-12)
        # with SGD momentum the penalised channels swing through zero, so what is left is not monotone in the strength
        # (measured 0.77 / 0.16 / 0.13 / 0.03 left at sparse_reg 0.01 / 0.05 / 0.2 / 0.3 after 3 epochs, 6 steps each)
        hint = ("; the penalty barely moved them: a larger sparse_reg (0.05-0.3 on a few hundred images) shrinks them"
                if left > WEAK_LEFT else "")  # fmt: skip
        LOGGER.info(f"{self.prefix}step {step}: {left:.1%} of the removed channels' norm left after "
                    f"sparse_epochs={self.args.sparse_epochs} at sparse_reg={self.args.sparse_reg:g}"
                    f"{hint}")  # fmt: skip
        pruner.remove(cuts)
        return self.after_cut(pruner, [len(s) - len(c) for s, c in zip(pruner.scores, cuts)], done["ratio"])

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
        return sensitivity_ratios(self.save_dir / "sensitivity.csv", self.args.rate, self.scan, plot=self.args.plots)

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
        if total <= target_macs:
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
