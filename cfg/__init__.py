"""Default settings of ultralytics-prune, merged over Ultralytics' own `default.yaml`."""

from pathlib import Path

PRUNE_CFG_PATH = Path(__file__).with_name("default.yaml")
