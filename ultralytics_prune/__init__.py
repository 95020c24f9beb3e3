"""ultralytics-prune: structured pruning and Network Slimming for Ultralytics YOLO."""

__version__ = "0.1.0"
