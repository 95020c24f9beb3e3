"""The pruning loop, written once: `PruneRun` runs every recipe (DepGraph, slim) through the same steps.

A run is: load -> swap twins -> baseline row -> for each step: the recipe removes channels (its one seam, `remove`)
-> re-estimate BatchNorm statistics -> validate -> fine-tune -> validate -> measure -> row -> stop rule -> save step
-> record; then save, export, check, summary. A recipe is a small subclass that says what one step removes and how
many steps there are.
"""

from __future__ import annotations

import json
import shutil
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import torch.nn as nn
from ultralytics.utils import LOGGER, TQDM, YAML, colorstr
from ultralytics.utils.torch_utils import select_device

from ultralytics_prune.cfg import get_prune_cfg, ultralytics_args
from ultralytics_prune.channels.calibrate import recalibrate_batchnorm, training_images
from ultralytics_prune.channels.graph import hold_modules
from ultralytics_prune.checkpoint import load_model
from ultralytics_prune.errors import DiskFull, ExportMismatch, is_disk_full
from ultralytics_prune.files import atomic_path
from ultralytics_prune.measure.latency_target import LatencyProbe
from ultralytics_prune.measure.report import (
    check_onnx,
    count_macs_params,
    export_onnx,
    log_summary,
    one_banner,
    write_atomic,
)
from ultralytics_prune.preflight import check_dataset, check_device, check_disk, check_imgsz
from ultralytics_prune.recipes.finetune import StepFinetune, shock_columns
from ultralytics_prune.recipes.finetune_state import RESUME_STATE, caller_random_state
from ultralytics_prune.recipes.run_files import RunFiles
from ultralytics_prune.run_folder import RunLock, find_resume_dir, new_run_dir, run_args
from ultralytics_prune.tasks import TASKS, task_of


class PruneRun(StepFinetune, RunFiles):
    """One pruning run: load the checkpoint, measure, prune in steps with fine-tuning, report and export.

    Subclasses set `mode` and `result_name` and implement `remove` (what one step removes) and, when they take
    several steps, `n_steps`.

    Attributes:
        args (IterableSimpleNamespace): Ultralytics args merged with the ultralytics-prune keys, checked.
        save_dir (Path): The run folder, `runs/<mode>/<name>`.
        model (nn.Module): The model being pruned (FP32, block twins swapped in).
        task (Task): The model's task: its trainer, validator and the metric `max_map_drop` watches.
        rows (list[dict]): One row of numbers per finished step; row 0 is the unpruned model.
    """

    mode = "prune"
    result_name = "pruned"

    def __init__(self, args: SimpleNamespace):
        """Load and check what the run needs, then create the run folder (nothing is written before that).

        Args:
            args (SimpleNamespace): From `get_prune_cfg` (the entry point checked them); `epochs` is already
                `finetune_epochs`.
        """
        self.args = args
        self.prefix = colorstr(f"{self.mode}: ")
        self.rows: list[dict] = []
        self.speed: LatencyProbe | None = None  # PyTorch CPU timing against the unpruned model (`start_timing`)
        self.resuming = bool(args.resume)
        if self.resuming:
            self.save_dir = find_resume_dir(args.resume, self.project, self.mode, self.result_name)
            self.lock = RunLock(self.save_dir, f"resuming it ('yolo {self.mode} resume={self.save_dir}')")
            self.args = get_prune_cfg(overrides={**run_args(self.save_dir), "resume": False})
            self.task = TASKS[self.args.task]
            self.model = None  # loaded by restore()
        else:
            self.model = load_model(self.args.model)
            self.task = task_of(self.model)
            self.args.task = self.task.name  # the checkpoint decides, as in Ultralytics
            hold_modules(self.model, self.args.hold)  # everything that can be wrong fails here, before any folder
            check_dataset(self.args.data, self.model)
            check_device(self.args.device)
            check_imgsz(self.args.imgsz)
            check_disk(self.project, Path(self.args.model), files=4 * self.n_steps + 2)
            self.save_dir = new_run_dir(self.project / (self.args.name or "exp"), self.args.exist_ok)
            self.lock = RunLock(self.save_dir, "starting another run in it (pass another 'name=')")
            with atomic_path(self.save_dir / "args.yaml") as tmp:  # a killed start never leaves half an args.yaml
                YAML.save(tmp, vars(self.args))
        self.csv = self.save_dir / f"{self.mode}_results.csv"

    @property
    def method(self) -> str:
        """What `mark_pruned` records as the method (the mode, unless a recipe says otherwise)."""
        return self.mode

    @property
    def n_steps(self) -> int:
        """How many prune -> fine-tune steps the recipe takes."""
        return 1

    def remove(self, step: int) -> dict:
        """The recipe's seam: remove this step's channels from `self.model` in place.

        Returns:
            (dict): `ratio`, the cumulative share of prunable channels asked for so far, and `removed`, the share
                really removed (they differ by rounding and by `min_channels`).
        """
        raise NotImplementedError

    # the run ----------------------------------------------------------------------------------------------------------
    def __call__(self) -> Path:
        """Run every step (see module docstring) and return the path of the final checkpoint.

        Ctrl-C (KeyboardInterrupt) says in one line how to go on and is raised again; the run resumes as after a kill.
        """
        try:
            with caller_random_state(), one_banner():
                # the CPU thread count every validator and trainer sets (Ultralytics' `select_device`), set before the
                # first cut: sums over another count of threads round differently, and a resumed run cuts first
                select_device(self.args.device, verbose=False)
                start = self.restore() if self.resuming else self.begin()
                for step in TQDM(range(start, self.n_steps + 1), desc=f"{self.prefix}steps", total=self.n_steps,
                                 initial=start - 1):  # fmt: skip
                    if not self.run_step(step):
                        break
                return self.finish()
        except KeyboardInterrupt:
            LOGGER.warning(f"{self.prefix}interrupted; 'yolo {self.mode} resume={self.save_dir}' goes on from here")
            raise
        except Exception as e:
            if not is_disk_full(e):
                raise
            raise DiskFull(f"no space left to write in {self.save_dir} ({type(e).__name__}: {e}); every file written "
                           f"before is intact: free space, then 'yolo {self.mode} resume={self.save_dir}'") from e
        finally:
            self.lock.release()

    def begin(self) -> int:
        """Swap in the block twins and record the unpruned model as row 0; return the first step."""
        self.swap_twins(self.model)
        self.start_timing(self.model)
        start = self.validate(self.model)
        row = {"step": 0, "ratio": 0.0, "removed": 0.0, **self.measure(self.model), **self.map_columns(start),
               **shock_columns(self.task.metric, start[self.task.metric], [])}  # fmt: skip
        self.record(row)
        return 1

    def run_step(self, step: int) -> bool:
        """Remove, validate, fine-tune, validate, measure, record; False when the stop rule ended the run.

        The row holds what the recipe's `remove` returned besides `ratio` and `removed` as columns of its own, and the
        fine-tune's first-epoch and lowest mAP50-95 with `shock`, that lowest minus the mAP right after the cut.
        """
        step_dir = self.save_dir / f"step{step}"
        if step_dir.exists() and not any(step_dir.rglob(RESUME_STATE)):  # a step redone from its start after a kill
            shutil.rmtree(step_dir)
        done = self.remove(step)
        self.model.zero_grad(set_to_none=True)
        if self.args.recalibrate:
            recalibrate_batchnorm(self.model, training_images(ultralytics_args(self.args), self.args.recalibrate))
        pre = self.validate(self.model)
        post, curve = pre, []
        if self.args.finetune_epochs > 0:
            tuned = self.finetune(self.model, step_dir, self.args.finetune_epochs)
            curve = tuned.curve
            if tuned.tuned:
                post = self.validate(self.model)
        extra = {k: v for k, v in done.items() if k not in ("ratio", "removed")}  # the recipe's own columns
        row = {"step": step, "ratio": done["ratio"], "removed": done["removed"], **self.measure(self.model),
               **self.map_columns(pre, post), **shock_columns(self.task.metric, pre[self.task.metric], curve),
               **extra}  # fmt: skip
        if self.lost_too_much(row):
            self.model = self.last_good_model(step)
            return False
        self.save_step(step_dir)
        self.record(row)
        return True

    def lost_too_much(self, row: dict) -> bool:
        """The stop rule: the task's mAP50-95 after the step is more than `max_map_drop` below the unpruned model's."""
        metric = self.task.metric
        base, now = self.rows[0][f"{metric}_post"], row[f"{metric}_post"]
        if base - now <= self.args.max_map_drop:
            return False
        LOGGER.warning(
            f"{self.prefix}step {row['step']}: {metric} {now:.4f} is more than max_map_drop={self.args.max_map_drop} "
            f"below the baseline {base:.4f}; stopping and keeping the model of step {row['step'] - 1}"
        )
        return True

    def finish(self) -> Path:
        """Save the final model, export and check ONNX, log the summary line."""
        self.save_model(self.final_file, prune_results=self.rows)
        LOGGER.info(f"{self.prefix}saved {self.final_file}")
        if self.args.onnx:
            onnx_file = export_onnx(self.final_file, self.args.imgsz)
            check = check_onnx(onnx_file, self.model, self.args.imgsz)
            write_atomic(self.save_dir / "onnx_check.json", json.dumps({"file": str(onnx_file), **check}, indent=2))
            status = "matches" if check["match"] else "DOES NOT match"
            LOGGER.info(
                f"{self.prefix}ONNX {onnx_file.name} {status} PyTorch (max abs diff {check['max_abs_diff']:.2e}), "
                f"onnxruntime CPU {check['onnx_ms']:.2f}ms"
            )
        log_summary(self.mode, self.rows[0], self.rows[-1], self.task.metric)
        if self.args.onnx and not check["match"]:
            raise ExportMismatch(
                f"{onnx_file} does not match PyTorch: max abs diff {check['max_abs_diff']:.3g} (output shape "
                f"{check['shape']}), see {self.save_dir / 'onnx_check.json'}; the PyTorch model is saved as "
                f"{self.final_file}; 'onnx=False' skips the export"
            )
        return self.final_file

    # measuring --------------------------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Box mAP50 and mAP50-95 of `model` on the val split, and the task's own (a copy is validated).

        Returns:
            (dict): `mAP50`, `mAP50-95` and, for segment and pose, `mask_`/`pose_` `mAP50` and `mAP50-95`.
        """
        args = vars(ultralytics_args(self.args))
        args.update(mode="val", plots=False, save_json=False, verbose=False, split="val", half=False, rect=True)
        validator = self.task.validator(save_dir=self.save_dir / "val", args=args)
        return self.task.metric_columns(validator(model=deepcopy(model).float()))

    def start_timing(self, unpruned: nn.Module) -> None:
        """Time every row against `unpruned` from now on (see `measure`)."""
        self.speed = LatencyProbe(unpruned, self.args.imgsz, "torch")

    def measure(self, model: nn.Module) -> dict:
        """MACs (G), parameters (M), PyTorch CPU latency (ms) at the run's image size and the speed-up over the
        unpruned model, timed in the same interleaved rounds (latencies taken minutes apart do not compare)."""
        macs, params = count_macs_params(model, self.args.imgsz)
        model_ms, unpruned_ms = self.speed.measure(model)
        speedup = 1.0 if not self.rows else unpruned_ms / model_ms  # row 0 is the unpruned model
        return {"macs_G": macs / 1e9, "params_M": params / 1e6, "latency_ms": model_ms, "speedup": speedup}

    @staticmethod
    def map_columns(pre: dict[str, float], post: dict[str, float] | None = None) -> dict[str, float]:
        """The mAP columns of a row: after the cut ("pre") and after fine-tuning ("post", the same without it)."""
        return {**{f"{k}_pre": v for k, v in pre.items()}, **{f"{k}_post": v for k, v in (post or pre).items()}}
