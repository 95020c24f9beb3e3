"""The settings ultralytics-prune adds to Ultralytics, merged over its `default.yaml` and validated alike."""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ultralytics.cfg import cfg2dict, get_cfg
from ultralytics.utils import DEFAULT_CFG_DICT, YAML, IterableSimpleNamespace

from ultralytics_prune.cfg import PRUNE_CFG_PATH

PRUNE_DEFAULTS: dict[str, Any] = YAML.load(PRUNE_CFG_PATH)
DEFAULT_PRUNE_CFG_DICT: dict[str, Any] = {**DEFAULT_CFG_DICT, **PRUNE_DEFAULTS}

IMPORTANCES = ("l1", "l2", "bn", "lamp", "taylor", "random")
# key -> (types, check, what a valid value is)
_NUMBER = (int, float)
PRUNE_KEY_RULES: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "sr": (_NUMBER, lambda v: v >= 0, "a number >= 0, e.g. 'sr=0.0001'"),
    "sr_decay": (_NUMBER, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 'sr_decay=0.9'"),
    "rate": (_NUMBER, lambda v: 0 <= v < 1, "a fraction 0 <= rate < 1, e.g. 'rate=0.5'"),
    "round_to": (int, lambda v: v >= 1, "an integer >= 1, e.g. 'round_to=8'"),
    "attention": (str, lambda v: v in ("hold",), "'hold'"),
    "iterative_steps": (int, lambda v: v >= 1, "an integer >= 1, e.g. 'iterative_steps=4'"),
    "importance": (str, lambda v: v in IMPORTANCES, f"one of {', '.join(IMPORTANCES)}"),
    "global_pruning": (bool, lambda v: True, "True or False"),
    "target_macs": (_NUMBER, lambda v: v >= 0, "GMACs >= 0, e.g. 'target_macs=2.5'"),
    "speedup": (_NUMBER, lambda v: v == 0 or v >= 1, "0 or a factor >= 1, e.g. 'speedup=2'"),
    "max_map_drop": (_NUMBER, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 'max_map_drop=0.05'"),
    "finetune_epochs": (int, lambda v: v >= 0, "an integer >= 0, e.g. 'finetune_epochs=10'"),
    "onnx": (bool, lambda v: True, "True or False"),
    "threshold": (_NUMBER, lambda v: v >= 0, "a number >= 0, e.g. 'threshold=0.01'"),
    "min_channels": (int, lambda v: v >= 1, "an integer >= 1, e.g. 'min_channels=1'"),
}


def check_prune_keys(base: dict, custom: dict) -> None:
    """Raise one readable SyntaxError line for every key of `custom` that `base` does not know, with suggestions.

    Same message as Ultralytics' `check_dict_alignment`, without printing the whole CLI help first.
    """
    lines = []
    for key in custom:
        if key not in base and key not in {"augmentations", "save_dir"}:
            matches = [f"{k}={base[k]}" if base.get(k) is not None else k for k in get_close_matches(key, base)]
            hint = f" Similar arguments are i.e. {matches}." if matches else ""
            lines.append(f"'{key}' is not a valid YOLO argument.{hint}")
    if lines:
        raise SyntaxError("\n".join(lines))


def check_prune_cfg(cfg: dict) -> None:
    """Check the types and ranges of the ultralytics-prune keys in `cfg`; `hold` is normalised in place.

    Raises:
        TypeError: A value of the wrong type, e.g. 'sr=abc'.
        ValueError: A value out of range, e.g. 'sr=-1'.
    """
    for key, (types, valid, expected) in PRUNE_KEY_RULES.items():
        if key not in cfg:
            continue
        value = cfg[key]
        types = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise TypeError(f"'{key}={value}' is of invalid type {type(value).__name__}. Valid '{key}' is {expected}.")
        if not valid(value):
            raise ValueError(f"'{key}={value}' is an invalid value. Valid '{key}' is {expected}.")
    if "hold" in cfg:
        cfg["hold"] = parse_hold(cfg["hold"])


def parse_hold(value: Any) -> list[str]:
    """Normalise the `hold` key (None, int, 'a,b' string or list) to a list of layer names or indices as strings."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def prune_cfg_dict(cfg: str | Path | dict | SimpleNamespace = DEFAULT_PRUNE_CFG_DICT) -> dict:
    """Return `cfg` as a dict with every ultralytics-prune key present (their defaults fill the gaps).

    Ultralytics' DDP launcher hands a trainer `DEFAULT_CFG_DICT`, which lacks our keys; this restores them.
    """
    return {**PRUNE_DEFAULTS, **cfg2dict(cfg)}


def get_prune_cfg(
    cfg: str | Path | dict | SimpleNamespace = DEFAULT_PRUNE_CFG_DICT, overrides: dict | None = None
) -> IterableSimpleNamespace:
    """Ultralytics' `get_cfg` over the merged defaults: unknown keys, types and ranges are checked for all keys."""
    cfg = prune_cfg_dict(cfg)
    overrides = cfg2dict(overrides) if overrides else {}
    check_prune_keys(cfg, overrides)
    check_prune_cfg({**cfg, **overrides})
    args = get_cfg(cfg, overrides)
    check_prune_cfg(vars(args))
    return args


def ultralytics_args(args: SimpleNamespace | dict) -> IterableSimpleNamespace:
    """A copy of `args` without the ultralytics-prune keys, for Ultralytics classes that validate against theirs."""
    return IterableSimpleNamespace(**{k: v for k, v in cfg2dict(args).items() if k not in PRUNE_DEFAULTS})


def recipe_overrides(overrides: dict) -> dict:
    """For `prune`/`slim`: `epochs` means fine-tune epochs (0 allowed), so it is passed on as `finetune_epochs`."""
    overrides = dict(overrides)
    if "epochs" in overrides:
        overrides["finetune_epochs"] = overrides.pop("epochs")
    return overrides
