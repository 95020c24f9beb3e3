"""The checkpoints a run keeps in its folder: what it saves (plain Ultralytics modules, marked as pruned), and the
models it loads back (its input, a finished step) with the block twins swapped in; the CSV and plot of its rows; and
where a resumed run goes on from."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from ultralytics.utils import LOGGER, SETTINGS

from ultralytics_prune.cfg import ultralytics_args
from ultralytics_prune.checkpoint import load_model, mark_pruned, save_checkpoint
from ultralytics_prune.files import read_csv, write_csv
from ultralytics_prune.measure.plots import plot_prune_results
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.patches.dfl import replace_dfl


class RunFiles:
    """The files of a run (a base of `loop.PruneRun`, which sets `args`, `save_dir`, `model`, `rows`, `csv`, `task`
    and `mode`)."""

    @property
    def project(self) -> Path:
        """The folder that holds this mode's runs: `project=` or `<runs_dir>/<mode>`."""
        return Path(self.args.project) if self.args.project else Path(SETTINGS["runs_dir"]) / self.mode

    @property
    def final_file(self) -> Path:
        """The result checkpoint; the run is finished when it exists and its export was checked (`is_finished`)."""
        return self.save_dir / "weights" / f"{self.result_name}.pt"

    def mark_pruned(self, model: nn.Module) -> None:
        """Record in `model` that this run pruned it (see `checkpoint.mark_pruned`)."""
        mark_pruned(model, self.method, rate=self.args.rate, imgsz=self.args.imgsz)

    def save_model(self, file: Path, **extra) -> Path:
        """Save `self.model` (plain Ultralytics modules), marked as pruned by this run's mode, with the Ultralytics
        args to train it on."""
        self.mark_pruned(self.model)
        return save_checkpoint(self.model, file, train_args=vars(ultralytics_args(self.args)), **extra)

    def save_step(self, step_dir: Path) -> None:
        """Keep a finished step's model, for resume and for falling back to the last good step."""
        self.save_model(step_dir / "weights" / "step.pt")

    def record(self, row: dict) -> None:
        """Append a row, rewrite the CSV and the plot; the rows are then those of the CSV, as a resumed run reads them
        (rounded to 6 significant digits), so that the steps after compute from the same numbers."""
        self.rows.append(row)
        write_csv(self.rows, self.csv)
        self.rows = read_csv(self.csv)
        plot_prune_results(self.rows, self.save_dir / f"{self.mode}_results.png", self.task.metric)

    def input_model(self) -> nn.Module:
        """The input checkpoint's model again, with the block twins swapped in (as row 0 measured it)."""
        return self.load(self.args.model)

    @staticmethod
    def swap_twins(model: nn.Module) -> nn.Module:
        """Swap in the prunable block twins and the box decoder that exports faster (`patches.dfl`); return `model`.

        Only the run's model holds them: what it saves is plain Ultralytics again (`checkpoint.to_plain`).
        """
        replace_blocks(model)
        replace_dfl(model)
        return model

    def load(self, file: str | Path) -> nn.Module:
        """A checkpoint of this run (or its input) as the run works on it: FP32, trainable, twins swapped in."""
        return self.swap_twins(load_model(file))

    def last_good_model(self, step: int) -> nn.Module:
        """The model of the last finished step before `step` (the input model before step 1)."""
        return self.input_model() if step <= 1 else self.load(self.step_file(step - 1))

    def step_file(self, step: int) -> Path:
        """Where the model of a finished step is kept."""
        return self.save_dir / f"step{step}" / "weights" / "step.pt"

    # resume -----------------------------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Reload the rows and the last finished step's model; return the next step.

        A run killed after saving its result but before its export is checked goes straight to `finish`.
        """
        if not self.csv.exists():  # stopped before the baseline row was written
            self.model = load_model(self.args.model)
            return self.begin()
        self.rows = read_csv(self.csv)
        if self.final_file.exists():
            self.model = self.load(self.final_file)
            LOGGER.info(f"{self.prefix}resuming {self.save_dir}: saved, exporting again")
            return self.n_steps + 1
        last = int(self.rows[-1]["step"])
        self.model = self.load(self.step_file(last)) if last else self.input_model()
        self.start_timing(self.input_model() if last else self.model)
        LOGGER.info(f"{self.prefix}resuming {self.save_dir} after step {last}")
        return last + 1
