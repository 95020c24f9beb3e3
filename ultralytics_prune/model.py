"""`YOLOPrune`: Ultralytics' `YOLO` with sparsity training, DepGraph pruning and Network Slimming."""

from __future__ import annotations

from pathlib import Path

from ultralytics import YOLO

from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides
from ultralytics_prune.errors import UserError
from ultralytics_prune.patches.trainer import SPARSITY_TRAINERS
from ultralytics_prune.pruner import DepGraphPruner
from ultralytics_prune.slim import NetworkSlimmer
from ultralytics_prune.unstructured import UnstructuredPruner

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


class YOLOPrune(YOLO):
    """A `YOLO` model whose detect, segment, pose and OBB trainers are the sparsity trainers, plus `prune()`, `slim()`.

    Every usual `YOLO` method works. `train()` accepts the ultralytics-prune keys (e.g. `sr=1e-4`) and trains a pruned
    checkpoint at its pruned widths instead of rebuilding it from yaml.

    Examples:
        >>> model = YOLOPrune("yolov8n.yaml")
        >>> model.train(data="data.yaml", epochs=50, sr=1e-4, optimizer="SGD")
        >>> YOLOPrune("runs/detect/train/weights/best.pt").prune(data="data.yaml", rate=0.5)
    """

    @property
    def task_map(self) -> dict:
        """Ultralytics' task map with each task's trainer replaced by its sparsity trainer (`SPARSITY_TRAINERS`)."""
        task_map = super().task_map
        for task, trainer in SPARSITY_TRAINERS.items():
            task_map[task] = {**task_map[task], "trainer": trainer}
        return task_map

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
