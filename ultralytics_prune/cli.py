"""The `yolo` command: Ultralytics' CLI plus the modes `prune` and `slim` and the keys of `cfg/default.yaml`.

`prune`, `slim` and the trainings that need us (a key of ours set, a pruned model, see `model.our_trainer`) run here
(`run_recipe`, `YOLOPrune`); a `UserError` is printed as one line with exit status 2, any other exception keeps its
traceback; `help` and `cfg` show our keys after Ultralytics' own. Every other command, every other training included
(classification, `sr=0`), is handed to Ultralytics' entrypoint unchanged (our keys, when given at their defaults,
left out).
"""

from __future__ import annotations

import os
import shutil
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
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_PATH, LOGGER, YAML, colorstr

from ultralytics_prune.cfg import DEFAULT_PRUNE_CFG_DICT, PRUNE_CFG_PATH, PRUNE_DEFAULTS, check_prune_keys
from ultralytics_prune.checkpoint import is_pruned_file
from ultralytics_prune.errors import ExportMismatch, UserError
from ultralytics_prune.model import YOLOPrune, our_keys, resumes_our_training, run_recipe
from ultralytics_prune.preflight import check_dataset, check_device
from ultralytics_prune.tasks import SUPPORTED
from ultralytics_prune.tasks import TASKS as PRUNABLE_TASKS

OUR_MODES = ("train", "prune", "slim")  # modes that may run here (`train` only when it needs us, see `needs_us`)
HELP_WORDS = {"help", "h", "-h", "--help", "-help"}
CFG_WORDS = {"cfg", "--cfg", "-cfg"}

PRUNE_HELP_MSG = f"""
    {colorstr("ultralytics-prune")} adds two modes and the keys below (`yolo cfg` prints them with defaults):

        yolo train model=yolov8s.yaml data=my.yaml sr=0.0001 optimizer=SGD   # sparsity training
        yolo slim  model=runs/detect/train/weights/last.pt data=my.yaml rate=0.5   # Network Slimming
        yolo prune model=best.pt data=my.yaml rate=0.5 iterative_steps=4      # DepGraph pruning, fine-tuned
        yolo val   model=runs/prune/exp/weights/pruned.pt data=my.yaml         # plain Ultralytics still works

    Keys: {", ".join(k for k in DEFAULT_PRUNE_CFG_DICT if k not in DEFAULT_CFG.__dict__)}
"""


def parse_cli_args(args: list[str]) -> dict:
    """Parse `k=v` pairs, tasks, modes, `cfg=file.yaml` and bare booleans into an overrides dict (keys checked).

    Raises:
        UserError: An unknown key, a key without its value, a missing cfg file.
    """
    known = {**DEFAULT_PRUNE_CFG_DICT, **dict.fromkeys((*TASKS, *MODES, *OUR_MODES))}
    overrides = {}
    for a in merge_equals_args(args):
        a = a[2:] if a.startswith("--") else a
        a = a[:-1] if a.endswith(",") else a
        if "=" in a:
            try:
                k, v = parse_key_value_pair(a)
            except AssertionError as e:  # Ultralytics asserts that a value follows the '='
                raise UserError(f"'{a}' has no value after '=': write it as 'key=value', e.g. 'rate=0.5'") from e
            if k == "cfg" and v is not None:
                overrides = {**load_cfg_file(v), **overrides}
            else:
                overrides[k] = v
        elif a in TASKS:
            overrides["task"] = a
        elif a in (*MODES, *OUR_MODES):
            overrides["mode"] = a
        elif isinstance(DEFAULT_PRUNE_CFG_DICT.get(a), bool):
            overrides[a] = True
        elif a in DEFAULT_PRUNE_CFG_DICT:
            example = f"{a}={DEFAULT_PRUNE_CFG_DICT[a]}"
            raise UserError(f"'{a}' is missing an '=' sign to set its value, i.e. try '{example}'")
        else:
            check_prune_keys(known, {a: ""})
    check_prune_keys(known, overrides)
    return overrides


def load_cfg_file(file: str) -> dict:
    """The keys of a `cfg=file.yaml` argument (its own `cfg` key ignored), or a `UserError` when it cannot be read."""
    if not Path(file).is_file():
        raise UserError(f"'cfg={file}' not found: pass the path of a yaml file of keys, e.g. 'cfg=my.yaml'")
    LOGGER.info(f"Overriding {DEFAULT_CFG_PATH} and {PRUNE_CFG_PATH} with {file}")
    content = YAML.load(file) or {}
    if not isinstance(content, dict):
        raise UserError(f"'cfg={file}' holds no 'key: value' pairs")
    return {k: v for k, v in content.items() if k != "cfg"}


def needs_us(args: list[str]) -> bool:
    """True for `prune`, `slim` and a training that needs our trainer: a key of ours set, a pruned checkpoint, or the
    resume of a training of ours (see `model.our_trainer`, which decides the same for Python).

    Raises:
        UserError: An unknown key or a bad `cfg=` file (with our keys in the "did you mean" list).
    """
    overrides = parse_cli_args(args)
    if overrides.get("mode") != "train" or our_keys(overrides):
        return True
    model = overrides.get("model")
    return resumes_our_training(overrides.get("resume"), model) or is_pruned_file(model or "")


def without_default_keys(args: list[str]) -> list[str]:
    """`args` without the `key=value` pairs of our keys (which are at their defaults: `needs_us` said no)."""
    return [a for a in args if "=" not in a or a.lstrip("-").split("=", 1)[0] not in PRUNE_DEFAULTS]


def hand_over(argv: list[str], debug: str) -> None:
    """Run Ultralytics' entrypoint on `argv` (program name first), as if it had been typed."""
    if debug:
        return ultralytics_entrypoint(" ".join(argv))
    saved = sys.argv[:]
    sys.argv[:] = argv  # Ultralytics reads this very list (utils.ARGV is sys.argv)
    try:
        return ultralytics_entrypoint()
    finally:
        sys.argv[:] = saved


def check_training_inputs(overrides: dict) -> None:
    """What Ultralytics would find wrong only after making the run folder (or with a traceback): the data, the
    checkpoint, the device, said in one line. Classification (a folder of images as data) is left to Ultralytics.

    Raises:
        UserError: `data` is missing or not a readable dataset, the checkpoint does not exist, the device is not there.
    """
    model = str(overrides.get("model") or "")
    if overrides.get("resume") or overrides.get("task") == "classify" or "-cls" in Path(model).stem:
        return
    if overrides.get("data") is None:
        raise UserError("'data' argument is missing: pass your dataset, e.g. 'yolo train data=my.yaml ...'")
    if model.endswith(".pt") and not Path(model).is_file():
        raise UserError(f"checkpoint '{model}' not found (nothing is downloaded): pass a '.pt' file or a yaml")
    check_dataset(overrides["data"])
    check_device(overrides.get("device"))


def run(args: list[str]) -> None:
    """Run `train` through `YOLOPrune`, `prune` or `slim` through `run_recipe` (which checks every key once)."""
    overrides = parse_cli_args(args)
    mode = overrides.pop("mode")
    task = overrides.pop("task", None)
    if task not in (None, *PRUNABLE_TASKS):
        raise UserError(f"'task={task}' is not supported: ultralytics-prune prunes YOLO {SUPPORTED} models")
    model = overrides.pop("model", None)
    if mode == "train":
        if model is None:
            model = DEFAULT_CFG.model or "yolo26n.yaml"
            LOGGER.warning(f"'model' argument is missing. Using default 'model={model}'.")
        check_training_inputs({**overrides, "model": model})
        YOLOPrune(model, task=task).train(**overrides)  # the trainer checks the keys
        return
    if model is None and not overrides.get("resume"):
        raise UserError(f"'model' argument is missing: pass a trained checkpoint, e.g. 'yolo {mode} model=best.pt'")
    run_recipe(mode, overrides if model is None else {**overrides, "model": model})


def cfg_file_mode(args: list[str]) -> str | None:
    """The `mode` set inside a `cfg=file.yaml` argument, if any (Ultralytics lets the file choose the mode)."""
    for a in args:
        if a.startswith("cfg=") and Path(a[4:]).is_file():
            return (YAML.load(a[4:]) or {}).get("mode")
    return None


def yolo_script_notice(script: str | Path) -> str | None:
    """One line when the `yolo` command installed beside `script` (`yolo-prune`) is not ours any more.

    Reinstalling or upgrading `ultralytics` rewrites the `yolo` script with its own (`yolo prune` then fails with
    Ultralytics' "not a valid YOLO argument"); this shows it to whoever runs `yolo-prune`, which always stays ours.
    """
    sibling = Path(script).with_name("yolo")
    found = str(sibling) if Path(script).parent != Path() else shutil.which("yolo")
    if found is None or not Path(found).is_file():
        return ("there is no 'yolo' command beside 'yolo-prune': 'yolo-prune' works the same; 'pip install "
                "--force-reinstall --no-deps ultralytics-prune' installs 'yolo' again")  # fmt: skip
    try:
        ours = "ultralytics_prune" in Path(found).read_text(encoding="utf-8", errors="ignore")[:4096]
    except OSError:
        return None
    if ours:
        return None
    return (f"'{found}' is Ultralytics' own 'yolo' again (reinstalling or upgrading ultralytics rewrites it), so "
            f"'yolo prune' fails there: use 'yolo-prune', or run 'pip install --force-reinstall --no-deps "
            f"ultralytics-prune' to make 'yolo' ours again")  # fmt: skip


def entrypoint(debug: str = "") -> None:
    """Entry point of the `yolo` and `yolo-prune` console scripts.

    Args:
        debug (str): Space-separated command line including the program name, as in Ultralytics' entrypoint.
    """
    argv = debug.split(" ") if debug else sys.argv
    if argv and Path(argv[0]).name == "yolo-prune" and (notice := yolo_script_notice(argv[0])):
        LOGGER.warning(notice)
    args = [a for a in argv[1:] if a]
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
        if not needs_us(args):  # plain training: Ultralytics' own, once its inputs are known to be there
            check_training_inputs(parse_cli_args(args))
            return hand_over([argv[0], *without_default_keys(args)], debug)
        try:
            run(args)
        except KeyboardInterrupt:  # the run said how to resume
            sys.exit(130)
    except (UserError, ExportMismatch) as e:  # anything else is a bug and keeps its traceback
        if os.getenv("YOLO_PRUNE_DEBUG"):
            raise
        LOGGER.error(" ".join(str(e).split()))
        sys.exit(2 if isinstance(e, UserError) else 1)


if __name__ == "__main__":
    entrypoint()
