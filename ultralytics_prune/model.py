"""`YOLOPrune`: Ultralytics' `YOLO` with sparsity training, DepGraph pruning and Network Slimming."""

from __future__ import annotations

from ultralytics import YOLO

from ultralytics_prune.patches.trainer import SparsityTrainer


class YOLOPrune(YOLO):
    """A `YOLO` model whose detection trainer is the sparsity trainer, plus `prune()` and `slim()`.

    Every usual `YOLO` method works. `train()` accepts the ultralytics-prune keys (e.g. `sr=1e-4`) and trains a pruned
    checkpoint at its pruned widths instead of rebuilding it from yaml.

    Examples:
        >>> model = YOLOPrune("yolov8n.yaml")
        >>> model.train(data="data.yaml", epochs=50, sr=1e-4, optimizer="SGD")
        >>> YOLOPrune("runs/detect/train/weights/best.pt").prune(data="data.yaml", rate=0.5)
    """

    @property
    def task_map(self) -> dict:
        """Ultralytics' task map with the detection trainer replaced by `SparsityTrainer`."""
        task_map = super().task_map
        task_map["detect"] = {**task_map["detect"], "trainer": SparsityTrainer}
        return task_map
