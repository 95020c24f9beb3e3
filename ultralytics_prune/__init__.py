"""ultralytics-prune: structured pruning and Network Slimming for Ultralytics YOLO."""

__version__ = "0.1.0"

from ultralytics_prune.errors import UserError
from ultralytics_prune.model import YOLOPrune

__all__ = ("UserError", "YOLOPrune", "__version__")
