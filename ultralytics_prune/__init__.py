"""ultralytics-prune: structured pruning and Network Slimming for Ultralytics YOLO."""

__version__ = "0.1.0"

from ultralytics_prune.errors import ExportMismatch, UserError
from ultralytics_prune.model import YOLOPrune

__all__ = ("ExportMismatch", "UserError", "YOLOPrune", "__version__")
