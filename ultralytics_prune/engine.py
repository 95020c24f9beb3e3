"""What both pruning recipes share: a run folder, validation, fine-tuning, checkpoints, ONNX check and the report.

`PruneRun` follows Ultralytics' engine classes: the recipe subclasses (`DepGraphPruner`, `NetworkSlimmer`) override
one seam, `steps()`, which prunes the model and yields once per finished pruning step.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Iterator

import torch.nn as nn
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import LOGGER, SETTINGS, YAML, colorstr
from ultralytics.utils.files import increment_path

from ultralytics_prune.checkpoint import load_detection_model, save_checkpoint
from ultralytics_prune.config import get_prune_cfg, recipe_overrides, ultralytics_args
from ultralytics_prune.patches.blocks import replace_blocks
from ultralytics_prune.report import (
    check_onnx,
    count_macs_params,
    export_onnx,
    log_summary,
    measure_latency,
    plot_prune_results,
    read_csv,
    write_csv,
)


class PruneRun:
    """One pruning run: load the checkpoint, measure, prune in steps with fine-tuning, report and export.

    Attributes:
        args (SimpleNamespace): Ultralytics args merged with the ultralytics-prune keys.
        save_dir (Path): The run folder, `runs/<mode>/<name>`.
        model (nn.Module): The model being pruned (FP32, block twins swapped in).
        rows (list[dict]): One row of numbers per finished step; row 0 is the unpruned model.
    """

    mode = "prune"
    result_name = "pruned"

    def __init__(self, overrides: dict):
        """Check every argument, then create the run folder (nothing is written before the checks pass)."""
        overrides = recipe_overrides(overrides)
        resume = overrides.get("resume")
        self.args = get_prune_cfg(overrides={**overrides, "mode": self.mode})
        self.resuming = bool(resume)
        if self.resuming:
            self.save_dir = self.find_resume_dir(resume)
            saved = YAML.load(self.save_dir / "args.yaml")
            self.args = get_prune_cfg(overrides={**saved, "resume": False})
        else:
            self.model = load_detection_model(self.args.model)  # fails before any folder is made
            self.check_model(self.model)
            project = Path(self.args.project) if self.args.project else Path(SETTINGS["runs_dir"]) / self.mode
            self.save_dir = increment_path(project / (self.args.name or "exp"), exist_ok=self.args.exist_ok)
            self.save_dir.mkdir(parents=True, exist_ok=True)
            YAML.save(self.save_dir / "args.yaml", vars(self.args))
        self.prefix = colorstr(f"{self.mode}: ")
        self.csv = self.save_dir / f"{self.mode}_results.csv"
        self.rows: list[dict] = []

    def check_model(self, model: nn.Module) -> None:
        """Check the arguments that depend on the model (e.g. `hold`) before anything is written."""
        from ultralytics_prune.pruner import hold_modules

        hold_modules(model, self.args.hold)

    def find_resume_dir(self, resume) -> Path:
        """The run folder to resume: `resume=path` (the folder or a file in it) or the latest unfinished run."""
        if isinstance(resume, (str, Path)) and str(resume) not in {"True", "true"}:
            path = Path(resume)
            path = path if path.is_dir() else path.parent
            if not (path / "args.yaml").exists():
                raise FileNotFoundError(f"'resume={resume}' is not a {self.mode} run folder (no args.yaml in {path})")
            return path
        runs = sorted(
            (p.parent for p in (Path(SETTINGS["runs_dir"]) / self.mode).glob("*/args.yaml")),
            key=lambda p: p.stat().st_mtime,
        )
        unfinished = [p for p in runs if not (p / "weights" / f"{self.result_name}.pt").exists()]
        if not unfinished:
            raise FileNotFoundError(f"no unfinished {self.mode} run to resume: pass 'resume=runs/{self.mode}/<name>'")
        return unfinished[-1]

    # measuring -------------------------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> tuple[float, float]:
        """Return (mAP50, mAP50-95) of `model` on the dataset's val split (a copy is validated; `model` is unchanged)."""
        args = vars(ultralytics_args(self.args))
        args.update(mode="val", plots=False, save_json=False, verbose=False, split="val", half=False)
        validator = DetectionValidator(save_dir=self.save_dir / "val", args=args)
        stats = validator(model=deepcopy(model).float())
        return float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])

    def measure(self, model: nn.Module) -> dict:
        """MACs (G), parameters (M) and PyTorch CPU latency (ms) at the run's image size."""
        macs, params = count_macs_params(model, self.args.imgsz)
        return {"macs_G": macs / 1e9, "params_M": params / 1e6, "latency_ms": measure_latency(model, self.args.imgsz)}

    # fine-tuning -------------------------------------------------------------------------------------------------------
    def finetune(self, model: nn.Module, step_dir: Path, epochs: int) -> None:
        """Fine-tune `model` for `epochs` and load the best weights back into it (same object, same widths).

        The trainer loads the pruned module from a checkpoint path, so Ultralytics' DDP launcher works unchanged.
        """
        from ultralytics_prune.patches.trainer import PrunedModelTrainer

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
        }
        trainer = PrunedModelTrainer(overrides=overrides)
        trainer.train()
        best = trainer.best if trainer.best.exists() else trainer.last
        tuned, _ = load_checkpoint(best)
        model.load_state_dict(tuned.float().state_dict())

    # the recipe --------------------------------------------------------------------------------------------------------
    def steps(self) -> Iterator[dict]:
        """Prune `self.model` step by step; after each step yield the row to record. Overridden by each recipe."""
        raise NotImplementedError

    def record(self, row: dict) -> None:
        """Append a row, rewrite the CSV and the plot."""
        self.rows.append(row)
        write_csv(self.rows, self.csv)
        plot_prune_results(self.rows, self.save_dir / f"{self.mode}_results.png")

    def baseline_row(self) -> dict:
        """Row 0: the unpruned model's numbers."""
        map50, map5095 = self.validate(self.model)
        return {
            "step": 0,
            "ratio": 0.0,
            **self.measure(self.model),
            "mAP50_pre": map50,
            "mAP50-95_pre": map5095,
            "mAP50_post": map50,
            "mAP50-95_post": map5095,
        }

    def __call__(self) -> Path:
        """Run the whole recipe and return the path of the final checkpoint."""
        if not self.resuming:
            replace_blocks(self.model)
            self.record(self.baseline_row())
        for _ in self.steps():
            pass
        return self.finish()

    def mark_pruned(self, model: nn.Module) -> None:
        """Record in the model's yaml that it was pruned, so nothing rebuilds it from the yaml."""
        model.yaml = {**model.yaml, "pruned": {"method": self.mode, "rate": self.args.rate, "imgsz": self.args.imgsz}}

    def finish(self) -> Path:
        """Save the final model, export and check ONNX, log the summary line."""
        final = self.save_dir / "weights" / f"{self.result_name}.pt"
        self.mark_pruned(self.model)
        save_checkpoint(self.model, final, train_args=vars(ultralytics_args(self.args)), prune_results=self.rows)
        LOGGER.info(f"{self.prefix}saved {final}")
        if self.args.onnx:
            onnx_file = export_onnx(final, self.args.imgsz)
            check = check_onnx(onnx_file, self.model, self.args.imgsz)
            (self.save_dir / "onnx_check.json").write_text(json.dumps({"file": str(onnx_file), **check}, indent=2))
            status = "matches" if check["match"] else "DOES NOT match"
            LOGGER.info(
                f"{self.prefix}ONNX {onnx_file.name} {status} PyTorch (max abs diff {check['max_abs_diff']:.2e}), "
                f"onnxruntime CPU {check['onnx_ms']:.2f}ms"
            )
        log_summary(self.rows[0], self.rows[-1])
        return final

    def load_resume_state(self) -> int:
        """Reload rows and the last finished step's model; return the next step number."""
        self.rows = read_csv(self.csv)
        last = int(self.rows[-1]["step"])
        state = self.save_dir / f"step{last}" / "weights" / "step.pt" if last else None
        self.model = load_detection_model(state) if state else load_detection_model(self.args.model)
        if not last:
            replace_blocks(self.model)
        LOGGER.info(f"{self.prefix}resuming {self.save_dir} after step {last}")
        return last + 1
