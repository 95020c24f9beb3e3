"""The fine-tune of one pruning step: Ultralytics' own trainer on the cut model, resumable, with the recipe's additions.

The cut model is saved as a checkpoint and the task's pruned-model trainer (`patches.trainer`) loads it from that
path, so Ultralytics' DDP launcher works unchanged; a fine-tune that diverges leaves the model as it was after the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER

from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.checkpoint import first_non_finite, save_checkpoint, student_of
from ultralytics_prune.files import read_csv
from ultralytics_prune.patches.trainer import PRUNED_TRAINERS
from ultralytics_prune.recipes.finetune_state import RESUME_STATE, training_finished
from ultralytics_prune.recipes.response_distill import ResponseDistillation


@dataclass
class Finetuned:
    """What one fine-tune did.

    Attributes:
        tuned (bool): Its best weights were loaded back into the model (False: it diverged, the model is unchanged).
        curve (list[float]): The task's mAP50-95 Ultralytics validated after each epoch (its EMA), from results.csv.
    """

    tuned: bool
    curve: list[float] = field(default_factory=list)


def shock_columns(metric: str, start: float, curve: list[float]) -> dict[str, float]:
    """The row columns that show a re-learn: `metric` after the fine-tune's first epoch, its lowest, and `shock`, that
    lowest minus `start` (the model it was given); NaN without a curve."""
    if not curve:
        return {f"{metric}_first": float("nan"), f"{metric}_lowest": float("nan"), "shock": float("nan")}
    return {f"{metric}_first": curve[0], f"{metric}_lowest": min(curve), "shock": min(curve) - start}


def epoch_curve(results_csv: Path, column: str) -> list[float]:
    """The values of `column` in an Ultralytics results.csv, one per epoch (empty when the file or column is missing)."""
    if not results_csv.is_file():
        return []
    rows = [{k.strip(): v for k, v in r.items()} for r in read_csv(results_csv)]
    return [float(r[column]) for r in rows if isinstance(r.get(column), float)]


class StepFinetune:
    """The fine-tune of `loop.PruneRun`'s steps (a base of it). Reads the run's `args`, `task`, `prefix` and
    `resuming` and calls its `mark_pruned` and `swap_twins`."""

    def finetune(self, model: nn.Module, step_dir: Path, epochs: int, setup: Callable | None = None) -> Finetuned:
        """Fine-tune `model` for `epochs` and load the best weights back into it (same object, same widths).

        A fine-tune that diverges (Ultralytics gives up on a NaN loss, or its best weights are not finite) leaves
        `model` as it was after the cut and says so in one line. Returns what it did, with the task's mAP50-95 after
        every epoch (`Finetuned`).

        The trainer loads the pruned module from a checkpoint path, so Ultralytics' DDP launcher works unchanged.
        With `distill=True` the input checkpoint is the teacher (`distill_model=path` picks another): with
        `distill_loss=response` the student's head outputs are pulled toward the teacher's (`response_distill`), with
        `feature` Ultralytics wraps the student in its `DistillationModel`; only the student's weights come back.
        `setup(trainer)`, when given, is called before training: a recipe's addition to this fine-tune (e.g.
        `group_sparsity.GroupSparsity.attach`).
        """
        self.mark_pruned(model)  # saved plain: the trainer must not rebuild it from its yaml
        teacher = teacher_of(self.args)
        source = save_checkpoint(model, step_dir / "weights" / "start.pt", train_args=vars(ultralytics_args(self.args)))
        overrides = {
            **vars(self.args),
            "model": str(source),
            "epochs": epochs,
            "project": str(step_dir.parent),
            "name": step_dir.name,
            "exist_ok": True,
            "resume": False,
            "pretrained": True,
            "mode": "train",
            "save_dir": str(step_dir),
            "distill_model": teacher if self.args.distill_loss == "feature" else None,
        }
        trainer = PRUNED_TRAINERS[self.task.name](overrides=overrides)
        trainer.state_file = step_dir / "weights" / RESUME_STATE
        if setup is not None:
            setup(trainer)
        if teacher and self.args.distill_loss == "response":
            ResponseDistillation(teacher, self.args.distill_gain).attach(trainer)
        finished = False
        if self.resuming and trainer.state_file.exists():  # killed inside this fine-tune: go on from its last epoch
            trainer.continue_from = trainer.state_file
            finished = training_finished(trainer.state_file)  # killed after its last epoch: nothing left to train
        poisoned_best = []  # Ultralytics writes NaN weights as zeros (nan_to_num), so look before it saves
        trainer.add_callback("on_model_save", lambda t: poisoned_best.append(first_non_finite(t.ema.ema))
                             if t.best_fitness == t.fitness else None)  # fmt: skip
        reason = None
        try:
            if not finished:
                trainer.train()
        except RuntimeError as e:  # Ultralytics' NaN recovery gives up with a RuntimeError naming NaN
            if "NaN" not in str(e):
                raise
            reason = " ".join(str(e).split())
        curve = epoch_curve(trainer.csv, f"metrics/mAP50-95({self.task.suffix})")
        best = trainer.best if trainer.best.exists() else trainer.last
        tuned = None
        if not reason and best.exists():
            loaded = load_checkpoint(best)[0]
            tuned = student_of(loaded)  # a DistillationModel is saved without its teacher
        if not reason and tuned is None:
            reason = "no checkpoint was written"
        elif not reason and poisoned_best and poisoned_best[-1]:
            reason = f"NaN or Inf in '{poisoned_best[-1]}' when {best.name} was written"
        elif not reason and (bad := first_non_finite(tuned)):
            reason = f"NaN or Inf in '{bad}' of {best.name}"
        if reason:
            LOGGER.warning(f"{self.prefix}{step_dir.name}: fine-tuning diverged ({reason}); keeping the model as it "
                           f"was after the cut")  # fmt: skip
            return Finetuned(False, curve)
        model.load_state_dict(self.swap_twins(tuned.float()).state_dict())
        trainer.state_file.unlink(missing_ok=True)  # the step is done; nothing of it needs continuing
        return Finetuned(True, curve)


def teacher_of(args) -> str | None:
    """The distillation teacher's checkpoint: `distill_model`, else the input model with `distill=True`."""
    return args.distill_model or (str(args.model) if args.distill else None)
