"""`YOLOPrune`: Ultralytics' `YOLO` with sparsity training, DepGraph pruning and Network Slimming."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from ultralytics import YOLO
from ultralytics.utils import YAML

from ultralytics_prune.cfg import PRUNE_DEFAULTS, get_prune_cfg, recipe_overrides
from ultralytics_prune.cfg.continuation import read_parent_training, sparsity_continuation
from ultralytics_prune.checkpoint import is_pruned, is_pruned_file
from ultralytics_prune.errors import UserError
from ultralytics_prune.files import UNREADABLE
from ultralytics_prune.patches.trainer import PRUNED_TRAINERS, SPARSITY_TRAINERS
from ultralytics_prune.recipes.depgraph import DepGraphPruner
from ultralytics_prune.recipes.slim import NetworkSlimmer
from ultralytics_prune.recipes.unstructured import UnstructuredPruner

RECIPES = {"prune": DepGraphPruner, "slim": NetworkSlimmer}


def run_recipe(mode: str, overrides: dict) -> Path:
    """Check the keys once and run the `prune` or `slim` recipe; return the final checkpoint.

    Args:
        mode (str): 'prune' or 'slim'.
        overrides (dict): The user's keys; `epochs` means fine-tune epochs.

    Raises:
        UserError: A key, value, path or checkpoint the user must fix (found before anything is written).
    """
    args = get_prune_cfg(overrides={**recipe_overrides(overrides), "mode": mode})
    recipe = UnstructuredPruner if mode == "prune" and args.method == "unstructured" else RECIPES[mode]
    return recipe(args)()


def our_keys(overrides: dict) -> dict:
    """The ultralytics-prune keys of `overrides` (and of its `cfg=file.yaml`) set to something else than the default."""
    from_file = (YAML.load(overrides["cfg"]) or {}) if overrides.get("cfg") else {}
    keys = {**from_file, **overrides}
    return {k: v for k, v in keys.items() if k in PRUNE_DEFAULTS and v != PRUNE_DEFAULTS[k]}


def resumes_our_training(resume, model) -> bool:
    """True when `resume=...` continues a training that one of our trainers started (its checkpoint has our keys)."""
    file = resume if isinstance(resume, (str, Path)) and str(resume).endswith(".pt") else model
    if not resume or not isinstance(file, (str, Path)) or not Path(file).is_file():
        return False
    try:
        from ultralytics.nn.tasks import torch_safe_load

        ckpt = torch_safe_load(str(file))[0]
        model = ckpt.get("ema") or ckpt.get("model")
        train_args = {**(ckpt.get("train_args") or {}), **(getattr(model, "args", None) or {})}
    except UNREADABLE:  # Ultralytics says what is wrong with the file
        return False
    return bool(our_keys(train_args))


def our_trainer(task: str, overrides: dict, model) -> type | None:
    """The trainer of ours a training needs, or None when it is plain Ultralytics training.

    Ours: when a key of ours is set (e.g. `sr=1e-4`, sparsity training), when the model is pruned (Ultralytics would
    rebuild it at full width from its yaml) or when `resume` continues a training of ours. Anything else, every task
    we do not prune (classify) included, is Ultralytics' own trainer, untouched.

    Args:
        task (str): The model's task.
        overrides (dict): The training keys.
        model (str | Path | nn.Module | None): The model (a module, or a `.pt` / yaml path).

    Raises:
        UserError: A key of ours is set for a task we do not prune.
    """
    keys = our_keys(overrides)
    if task not in SPARSITY_TRAINERS:
        if keys:
            raise UserError(f"{', '.join(keys)} cannot be used with task={task}: ultralytics-prune trains detect, "
                            f"segment, pose and OBB models")  # fmt: skip
        return None
    if keys or resumes_our_training(overrides.get("resume"), model):
        return SPARSITY_TRAINERS[task]
    if (is_pruned(model) if isinstance(model, nn.Module) else is_pruned_file(model or "")):
        return PRUNED_TRAINERS[task]
    return None


class YOLOPrune(YOLO):
    """A `YOLO` model whose `train()` also does sparsity training and keeps pruned widths, plus `prune()`, `slim()`.

    Every usual `YOLO` method works. `train()` accepts the ultralytics-prune keys (e.g. `sr=1e-4`) and trains a pruned
    checkpoint at its pruned widths instead of rebuilding it from yaml; any other training is Ultralytics' own.

    Examples:
        >>> model = YOLOPrune("yolov8n.yaml")
        >>> model.train(data="data.yaml", epochs=50, sr=1e-4, optimizer="SGD")
        >>> YOLOPrune("runs/detect/train/weights/best.pt").prune(data="data.yaml", rate=0.5)
    """

    def train(self, trainer=None, **kwargs):
        """Ultralytics' `train()`, with our trainer where the training needs it (see `our_trainer`).

        Args:
            trainer (type | None): A trainer class; None picks ours or Ultralytics' own.
            **kwargs: Ultralytics and ultralytics-prune keys.
        """
        if trainer is None:
            trainer = our_trainer(self.task, kwargs, self.model if self.ckpt else kwargs.get("model"))
            if trainer is None:  # plain Ultralytics: our keys, all at their defaults, are not its keys
                kwargs = {k: v for k, v in kwargs.items() if k not in PRUNE_DEFAULTS}
            elif self.ckpt and kwargs.get("sr", 0) > 0 and not kwargs.get("resume"):  # on from a trained model
                kwargs = {**sparsity_continuation(read_parent_training(self.ckpt_path)), **kwargs}
        return super().train(trainer=trainer, **kwargs)

    def _recipe_overrides(self, kwargs: dict) -> dict:
        """The checkpoint path of this model plus the user's keys."""
        model = kwargs.pop("model", None) or getattr(self.model, "pt_path", None) or self.ckpt_path
        if not model or not str(model).endswith(".pt"):
            raise UserError("pruning needs a trained checkpoint: load one, e.g. YOLOPrune('best.pt').prune(data=...)")
        return {"data": self.overrides.get("data"), **kwargs, "model": str(model)}

    def prune(self, **kwargs) -> YOLOPrune:
        """DepGraph iterative pruning with fine-tuning (`yolo prune`); returns a `YOLOPrune` of the pruned model.

        Args:
            **kwargs: Ultralytics and ultralytics-prune keys, e.g. `data`, `rate`, `iterative_steps`, `epochs`.
        """
        return YOLOPrune(str(run_recipe("prune", self._recipe_overrides(kwargs))))

    def slim(self, **kwargs) -> YOLOPrune:
        """Network Slimming by BatchNorm gamma with fine-tuning (`yolo slim`); returns a `YOLOPrune` of the result.

        Args:
            **kwargs: Ultralytics and ultralytics-prune keys, e.g. `data`, `rate` or `threshold`, `epochs`.
        """
        return YOLOPrune(str(run_recipe("slim", self._recipe_overrides(kwargs))))
