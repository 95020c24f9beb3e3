"""The `yolo` command: Ultralytics' CLI plus the modes `prune` and `slim` and the keys of `cfg/default.yaml`.

`train`, `prune` and `slim` run here through `YOLOPrune`; `help` and `cfg` show our keys after Ultralytics' own;
every other command is handed to Ultralytics' entrypoint unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ultralytics.cfg import (
    CLI_HELP_MSG,
    MODES,
    TASKS,
    merge_equals_args,
    parse_key_value_pair,
)
from ultralytics.cfg import entrypoint as ultralytics_entrypoint
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_PATH, LOGGER, YAML, checks, colorstr

from ultralytics_prune.cfg import PRUNE_CFG_PATH
from ultralytics_prune.config import DEFAULT_PRUNE_CFG_DICT, check_prune_keys, get_prune_cfg, recipe_overrides

OUR_MODES = ("train", "prune", "slim")  # modes run through YOLOPrune
HELP_WORDS = {"help", "h", "-h", "--help", "-help"}
CFG_WORDS = {"cfg", "--cfg", "-cfg"}
USER_ERRORS = (SyntaxError, TypeError, ValueError, FileNotFoundError, KeyError)

PRUNE_HELP_MSG = f"""
    {colorstr("ultralytics-prune")} adds two modes and the keys below (`yolo cfg` prints them with defaults):

        yolo train model=yolov8s.yaml data=my.yaml sr=0.0001 optimizer=SGD   # sparsity training
        yolo slim  model=runs/detect/train/weights/last.pt data=my.yaml rate=0.5   # Network Slimming
        yolo prune model=best.pt data=my.yaml rate=0.5 iterative_steps=4      # DepGraph pruning, fine-tuned
        yolo val   model=runs/prune/exp/weights/pruned.pt data=my.yaml         # plain Ultralytics still works

    Keys: {", ".join(k for k in DEFAULT_PRUNE_CFG_DICT if k not in DEFAULT_CFG.__dict__)}
"""


def parse_cli_args(args: list[str]) -> dict:
    """Parse `k=v` pairs, tasks, modes, `cfg=file.yaml` and bare booleans into an overrides dict (keys checked)."""
    known = {**DEFAULT_PRUNE_CFG_DICT, **dict.fromkeys((*TASKS, *MODES, *OUR_MODES))}
    overrides = {}
    for a in merge_equals_args(args):
        a = a[2:] if a.startswith("--") else a
        a = a[:-1] if a.endswith(",") else a
        if "=" in a:
            k, v = parse_key_value_pair(a)
            if k == "cfg" and v is not None:
                LOGGER.info(f"Overriding {DEFAULT_CFG_PATH} and {PRUNE_CFG_PATH} with {v}")
                overrides = {**{k: x for k, x in YAML.load(checks.check_yaml(v)).items() if k != "cfg"}, **overrides}
            else:
                overrides[k] = v
        elif a in TASKS:
            overrides["task"] = a
        elif a in (*MODES, *OUR_MODES):
            overrides["mode"] = a
        elif isinstance(DEFAULT_PRUNE_CFG_DICT.get(a), bool):
            overrides[a] = True
        elif a in DEFAULT_PRUNE_CFG_DICT:
            raise SyntaxError(f"'{a}' is missing an '=' sign to set its value, i.e. try '{a}={DEFAULT_PRUNE_CFG_DICT[a]}'")
        else:
            check_prune_keys(known, {a: ""})
    check_prune_keys(known, overrides)
    return overrides


def run(args: list[str]) -> None:
    """Run `train`, `prune` or `slim` through `YOLOPrune` after checking every key, type and range."""
    from ultralytics_prune.model import YOLOPrune

    overrides = parse_cli_args(args)
    mode = overrides.pop("mode")
    task = overrides.pop("task", None)
    if task not in (None, "detect"):
        raise ValueError(f"'task={task}' is not supported by ultralytics-prune yet; use a detection model (task=detect)")
    model = overrides.pop("model", None)
    if mode == "train":
        if model is None:
            model = DEFAULT_CFG.model or "yolo26n.yaml"
            LOGGER.warning(f"'model' argument is missing. Using default 'model={model}'.")
        if overrides.get("data") is None and not overrides.get("resume"):
            raise ValueError("'data' argument is missing: pass your dataset, e.g. 'yolo train data=my.yaml ...'")
    elif model is None and not overrides.get("resume"):
        raise ValueError(f"'model' argument is missing: pass a trained checkpoint, e.g. 'yolo {mode} model=best.pt'")
    checked = overrides if mode == "train" else recipe_overrides(overrides)
    get_prune_cfg(overrides={**checked, "model": model, "mode": mode})  # fail early, before anything is written
    if mode == "train":
        YOLOPrune(model, task=task).train(**overrides)
    else:
        recipe_class(mode)({**overrides, "model": model})()


def recipe_class(mode: str):
    """The class that runs `yolo prune` or `yolo slim`."""
    if mode == "prune":
        from ultralytics_prune.pruner import DepGraphPruner

        return DepGraphPruner
    from ultralytics_prune.slim import NetworkSlimmer

    return NetworkSlimmer


def cfg_file_mode(args: list[str]) -> str | None:
    """The `mode` set inside a `cfg=file.yaml` argument, if any (Ultralytics lets the file choose the mode)."""
    for a in args:
        if a.startswith("cfg=") and Path(a[4:]).is_file():
            return (YAML.load(a[4:]) or {}).get("mode")
    return None


def entrypoint(debug: str = "") -> None:
    """Entry point of the `yolo` and `yolo-prune` console scripts.

    Args:
        debug (str): Space-separated command line including the program name, as in Ultralytics' entrypoint.
    """
    args = (debug.split(" ") if debug else sys.argv)[1:]
    words = {a.lower() for a in args if "=" not in a}
    if not args or words & HELP_WORDS:
        LOGGER.info(CLI_HELP_MSG + PRUNE_HELP_MSG)
        return
    if words & CFG_WORDS:
        LOGGER.info(Path(DEFAULT_CFG_PATH).read_text() + "\n" + PRUNE_CFG_PATH.read_text())
        return
    if not words & set(OUR_MODES) and cfg_file_mode(args) not in OUR_MODES:
        return ultralytics_entrypoint(debug)
    try:
        run(args)
    except USER_ERRORS as e:
        if os.getenv("YOLO_PRUNE_DEBUG"):
            raise
        LOGGER.error(str(e).strip())
        sys.exit(2)


if __name__ == "__main__":
    entrypoint()
