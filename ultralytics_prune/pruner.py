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
from ultralytics_prune.widths import global_widths, kept_width

LATENCY_HEADROOM = 1.15  # a latency goal first cuts to this many times its share of the MACs, untimed
# With latency_aware, every layer keeps at least this share of the width a uniform cut would leave it: per millisecond,
# a flat ranking (e.g. an untrained model) would otherwise empty the slow layers down to `round_to` channels.
MIN_KEEP = 0.5


def step_ratios(rate: float, steps: int) -> list[float]:
    """Cumulative channel ratio after each step (linear schedule, as torch-pruning's), step 0 = 0."""
    return [rate * i / steps for i in range(steps + 1)]


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

    ledger: ChannelLedger | None = None  # what the step's cuts removed, kept while `reconstruct` is on

    def remove(self, step: int) -> dict:
        """This step's cut (see `cut`); with `sparse_epochs`, made after training its channels toward zero; with
        `reconstruct`, the layers the cut fed less rebuilt after it to give the outputs of the model before the step."""
        reference = deepcopy(self.model) if self.args.reconstruct else None
        self.ledger = ChannelLedger() if reference is not None else None
        done = self.sparse_cut(step) if self.args.sparse_epochs else self.cut(step)
        if reference is not None:
            args, n = ultralytics_args(self.args), self.args.reconstruct
            if self.args.recalibrate:  # the inputs as the cut model sees them once its statistics are re-estimated
                recalibrate_batchnorm(self.model, training_images(args, self.args.recalibrate))
            errors = reconstruct_consumers(reference, self.model, self.ledger, training_images(args, n))
            before, after = (float(torch.tensor([e[i] for e in errors]).median()) if errors else 0.0 for i in (1, 2))
            LOGGER.info(f"{self.prefix}step {step}: {len(errors)} layers the cut fed less rebuilt on {n} training "
                        f"images, output error (median) {before:.1%} -> {after:.1%}")  # fmt: skip
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
            model_ms, reference_ms = self.__dict__.pop("_cut_latency", None) or self.latency_probe.measure(model)
            row[self.latency_column] = model_ms
            row[f"{self.args.latency_backend}_speedup"] = reference_ms / model_ms
        if self.args.sparse_epochs:  # the step's share of the removed channels' norm left at the cut (row 0: none)
            row["sparse_left"] = self.__dict__.pop("_sparse_left", float("nan"))
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
        while True:
            model_ms, reference_ms = self._cut_latency = self.latency_probe.measure(self.model)
            now = model_ms / reference_ms
            LOGGER.info(f"{self.prefix}{self.args.latency_backend} {model_ms:.2f} ms, {now:.3f}x the unpruned model's, "
                        f"with {done['ratio']:.1%} of the channels removed (goal {share:.3f}x)")  # fmt: skip
            if now <= share:
                break
            if done["ratio"] >= 0.95:
                LOGGER.warning(f"{self.prefix}{share:.3f}x the unpruned latency on {self.args.latency_backend} not "
                               f"reached: {now:.3f}x with 95% of the channels removed")  # fmt: skip
                break
            done = self.prune_to(min(0.95, done["ratio"] + 0.025))
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

    def width_policy(self, pruner: GroupPruner) -> Callable[[float], list[int]]:
        """The run's width policy for the groups of `pruner`: ratio of the run as a whole -> width of every group.

        Uniform (every layer its share of `ratio`, or its sensitivity share), one global ranking of importance
        (`global_pruning`), or of importance per millisecond (`latency_aware`).
        """
        originals = [self.original_widths[name] for name in pruner.names]
        round_to = self.args.round_to
        if self.args.latency_aware:
            costs = channel_costs(self.latency_table, self.model, pruner.graph, pruner.groups)
            per_ms = [score / max(cost, 1e-9) for score, cost in zip(pruner.scores, costs)]
            return lambda ratio: global_widths(per_ms, originals, ratio, round_to, 1 - MIN_KEEP * (1 - ratio))
        if self.args.global_pruning:
            return lambda ratio: global_widths(pruner.scores, originals, ratio, round_to)
        current = pruner.widths()

        def uniform(ratio: float) -> list[int]:
            ratios = [self.layer_ratio(name, ratio) for name in pruner.names]
            return [kept_width(o, r, round_to, c) for o, r, c in zip(originals, ratios, current)]

        return uniform

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
        model = self.model
        self.model = deepcopy(model)
        try:
            done = self.cut(step)
            target = {name: m.out_channels for name, m in self.model.named_modules() if isinstance(m, nn.Conv2d)}
        finally:
            self.model = model
        pruner = self.scored_pruner()
        cuts = pruner.choose([target[name] for name in pruner.names])
        masks = channel_masks(model, pruner.touched(cuts))
        penalty = GroupSparsity(masks_as_saved(model, masks), self.args.sparse_reg, self.args.nbs)
        before = masked_norm(model, masks)
        self.finetune(model, self.save_dir / f"step{step}" / "sparse", self.args.sparse_epochs, setup=penalty.attach)
        left = self._sparse_left = masked_norm(model, masks) / max(before, 1e-12)
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

    def layer_ratio(self, name: str, ratio: float) -> float:
        """The share layer `name` loses when the run as a whole is at `ratio`: its sensitivity share, or `ratio`."""
        shares = self.sensitivity_shares
        if shares is None:
            return ratio
        return min(0.95, shares.get(name, self.args.rate) * ratio / self.args.rate)

    def max_ratio(self) -> float:
        """The run ratio past which the width policy cuts no further: 0.95, or with sensitivity shares the ratio at
        which the least-cut layer that may lose anything reaches 0.95 too. A MACs goal beyond what insensitive layers
        alone give (a converged YOLOv8n, `speedup=2`: x1.64 with every run ratio <= 0.95) then cuts the sensitive
        ones as well, in proportion to their shares."""
        shares = self.sensitivity_shares if not (self.args.latency_aware or self.args.global_pruning) else None
        positive = [s for s in (shares or {}).values() if s > 0]
        return max(0.95, 0.95 * self.args.rate / min(positive)) if positive else 0.95

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

        policy, top = self.width_policy(pruner), self.max_ratio()
        widths, ratio = widths_for_macs(policy, macs, target_macs, done["ratio"], top, cost)
        done = self.after_cut(pruner, pruner.prune(widths), ratio)
        while count_macs_params(self.model, self.args.imgsz)[0] > target_macs and done["ratio"] < 0.95:
            done = self.prune_to(min(0.95, done["ratio"] + 0.025))
        return done

    def macs_goal(self) -> float | None:
        """Final MACs goal from `target_macs` (GMACs) or `speedup`, or None when `rate` rules."""
        base = self.rows[0]["macs_G"] * 1e9
        if self.args.target_macs:
            return min(self.args.target_macs * 1e9, base)
        if self.args.speedup:
            return base / self.args.speedup
        return None
