"""DepGraph iterative pruning (torch-pruning): prune channels in steps, fine-tune after each, stop on mAP loss."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.utils import LOGGER, TQDM

from ultralytics_prune.engine import PruneRun
from ultralytics_prune.graph import attention_pruners, held_layers, opaque_attention, raw_head_outputs
from ultralytics_prune.report import count_macs_params, model_example_input


def build_importance(name: str) -> tp.importance.Importance:
    """The torch-pruning importance criterion called `name` (see `importance` in cfg/default.yaml)."""
    imp = tp.importance
    return {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn": lambda: imp.BNScaleImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "random": lambda: imp.RandomImportance(),
    }[name]()


def hold_modules(model: nn.Module, hold: list[str]) -> list[nn.Module]:
    """Resolve `hold` entries (layer indices like '22' or module names like 'model.9.cv2') to modules."""
    named = dict(model.named_modules())
    modules = []
    for key in hold:
        name = f"model.{key}" if key.isdigit() else key
        if name not in named:
            raise ValueError(f"'hold={key}' names no layer of the model; use a layer index or a module name")
        modules.append(named[name])
    return modules


def step_ratios(rate: float, steps: int) -> list[float]:
    """Cumulative channel ratio after each step (linear schedule, as torch-pruning's), step 0 = 0."""
    return [rate * i / steps for i in range(steps + 1)]


class DepGraphPruner(PruneRun):
    """`yolo prune`: torch-pruning's DepGraph structured pruning, iterative with fine-tuning.

    Each step removes channels so that the cumulative share removed follows a linear schedule up to `rate` (or until
    MACs reach `target_macs` / fall by `speedup`), validates ("pre"), fine-tunes for `epochs` and validates again
    ("post"). A step whose mAP50-95 ends more than `max_map_drop` below the baseline stops the run and the last good
    model is kept.
    """

    mode = "prune"
    result_name = "pruned"

    def make_pruner(self, ratio: float, iterative_steps: int = 1) -> tp.pruner.MetaPruner:
        """A torch-pruning MetaPruner for the current model, removing `ratio` of its current channels."""
        model = self.model
        held = held_layers(model, hold_modules(model, self.args.hold))
        with opaque_attention(model), torch.enable_grad():
            return tp.pruner.MetaPruner(
                model,
                model_example_input(model, max(64, self.args.imgsz)),
                importance=build_importance(self.args.importance),
                global_pruning=self.args.global_pruning,
                pruning_ratio=ratio,
                iterative_steps=iterative_steps,
                ignored_layers=held,
                round_to=self.args.round_to if self.args.round_to > 1 else None,
                customized_pruners=attention_pruners(),
                forward_fn=raw_head_outputs,
                root_module_types=[nn.Conv2d],
            )

    def compute_gradients(self) -> None:
        """Fill parameter gradients for the Taylor criterion with the detection loss of a few training batches."""
        from ultralytics.data import build_dataloader, build_yolo_dataset
        from ultralytics.data.utils import check_det_dataset

        from ultralytics_prune.config import ultralytics_args

        args = ultralytics_args(self.args)
        data = check_det_dataset(self.args.data)
        dataset = build_yolo_dataset(args, data["train"], self.args.batch, data, mode="val", stride=32)
        loader = build_dataloader(dataset, self.args.batch, 0, shuffle=False)
        model = self.model.train()
        model.args = args
        model.criterion = None
        model.zero_grad()
        for i, batch in enumerate(loader):
            batch["img"] = batch["img"].float() / 255
            loss, _ = model.loss(batch)
            loss.sum().backward()
            if i >= 3:
                break

    def prune_to(self, ratio_now: float, ratio_next: float) -> None:
        """Remove channels so the cumulative share removed goes from `ratio_now` to `ratio_next`."""
        relative = 1 - (1 - ratio_next) / (1 - ratio_now)
        pruner = self.make_pruner(relative)
        if self.args.importance == "taylor":
            self.compute_gradients()
        pruner.step()

    def prune_to_macs(self, target_macs: float) -> None:
        """Remove channels in small increments until the model's MACs are at most `target_macs`."""
        pruner = self.make_pruner(0.9, iterative_steps=45)
        for _ in range(45):
            if count_macs_params(self.model, self.args.imgsz)[0] <= target_macs:
                return
            if self.args.importance == "taylor":
                self.compute_gradients()
            pruner.step()

    def macs_goal(self) -> float | None:
        """Final MACs goal from `target_macs` (GMACs) or `speedup`, or None when `rate` rules."""
        base = self.rows[0]["macs_G"] * 1e9
        if self.args.target_macs:
            return min(self.args.target_macs * 1e9, base)
        if self.args.speedup:
            return base / self.args.speedup
        return None

    def steps(self) -> Iterator[dict]:
        """Prune, validate, fine-tune and validate, `iterative_steps` times (see class docstring)."""
        n = self.args.iterative_steps
        start = self.load_resume_state() if self.resuming else 1
        ratios = step_ratios(self.args.rate, n)
        goal = self.macs_goal()
        base = self.rows[0]
        for step in TQDM(range(start, n + 1), desc=f"{self.prefix}steps", total=n, initial=start - 1):
            step_dir = self.save_dir / f"step{step}"
            if goal is None:
                self.prune_to(ratios[step - 1], ratios[step])
            else:
                self.prune_to_macs(base["macs_G"] * 1e9 * (goal / (base["macs_G"] * 1e9)) ** (step / n))
            self.model.zero_grad(set_to_none=True)
            map50_pre, map_pre = self.validate(self.model)
            if self.args.finetune_epochs > 0:
                self.finetune(self.model, step_dir, self.args.finetune_epochs)
                map50_post, map_post = self.validate(self.model)
            else:
                map50_post, map_post = map50_pre, map_pre
            row = {
                "step": step,
                "ratio": ratios[step] if goal is None else 0.0,
                **self.measure(self.model),
                "mAP50_pre": map50_pre,
                "mAP50-95_pre": map_pre,
                "mAP50_post": map50_post,
                "mAP50-95_post": map_post,
            }
            if base["mAP50-95_post"] - map_post > self.args.max_map_drop:
                LOGGER.warning(
                    f"{self.prefix}step {step}: mAP50-95 {map_post:.4f} is more than max_map_drop="
                    f"{self.args.max_map_drop} below the baseline {base['mAP50-95_post']:.4f}; stopping and keeping "
                    f"the model of step {step - 1}"
                )
                previous = self.save_dir / f"step{step - 1}" / "weights" / "step.pt"
                if step > 1:
                    from ultralytics_prune.checkpoint import load_detection_model

                    self.model = load_detection_model(previous)
                else:
                    self.model = self.reload_unpruned()
                break
            self.save_step(step_dir)
            self.record(row)
            yield row

    def reload_unpruned(self) -> nn.Module:
        """The input model again (with block twins), when even the first step lost too much mAP."""
        from ultralytics_prune.checkpoint import load_detection_model
        from ultralytics_prune.patches.blocks import replace_blocks

        model = load_detection_model(self.args.model)
        replace_blocks(model)
        return model

    def save_step(self, step_dir) -> None:
        """Keep the finished step's model, for resume and for falling back to the last good step."""
        from ultralytics_prune.checkpoint import save_checkpoint
        from ultralytics_prune.config import ultralytics_args

        self.mark_pruned(self.model)
        save_checkpoint(self.model, step_dir / "weights" / "step.pt", train_args=vars(ultralytics_args(self.args)))
