"""The keys ultralytics-prune adds to Ultralytics (`default.yaml` beside this file) and the function that checks them.

As Ultralytics keeps `get_cfg` in `ultralytics/cfg/__init__.py`, `get_prune_cfg` lives here: every entry point (the
`yolo` command, `YOLOPrune`, the trainers that Ultralytics' DDP launcher starts) calls it once and gets back a new,
checked namespace; nothing is modified in place. A mistake raises `UserError` with one line naming the fix.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ultralytics.cfg import cfg2dict, get_cfg
from ultralytics.utils import DEFAULT_CFG_DICT, YAML, IterableSimpleNamespace

from ultralytics_prune.cfg.continuation import continue_from
from ultralytics_prune.errors import UserError

PRUNE_CFG_PATH = Path(__file__).with_name("default.yaml")
PRUNE_DEFAULTS: dict[str, Any] = YAML.load(PRUNE_CFG_PATH)
DEFAULT_PRUNE_CFG_DICT: dict[str, Any] = {**DEFAULT_CFG_DICT, **PRUNE_DEFAULTS}

IMPORTANCES = ("l1", "l2", "bn", "lamp", "taylor", "hessian", "random")
LATENCY_BACKENDS = ("onnxruntime", "torch", "cuda", "tensorrt")
DISTILL_LOSSES = ("response", "feature")
_NUMBER = (int, float)
# key -> (accepted types, range check, what a valid value is)
PRUNE_KEY_RULES: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "sr": (_NUMBER, lambda v: v >= 0, "a number >= 0, e.g. 'sr=0.0001'"),
    "sr_decay": (_NUMBER, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 'sr_decay=0.9'"),
    "rate": (_NUMBER, lambda v: 0 <= v < 1, "a fraction 0 <= rate < 1, e.g. 'rate=0.5'"),
    "round_to": ((int,), lambda v: v >= 1, "an integer >= 1, e.g. 'round_to=8'"),
    "attention": ((str,), lambda v: v in ("hold", "prune"), "'hold' or 'prune'"),
    "method": ((str,), lambda v: v in ("structured", "unstructured"), "'structured' or 'unstructured'"),
    "iterative_steps": ((int,), lambda v: v >= 1, "an integer >= 1, e.g. 'iterative_steps=4'"),
    "importance": ((str,), lambda v: v in IMPORTANCES, f"one of {', '.join(IMPORTANCES)}"),
    "global_pruning": ((bool,), lambda v: True, "True or False"),
    "sensitivity": ((bool,), lambda v: True, "True or False"),
    "latency_aware": ((bool,), lambda v: True, "True or False"),
    "target_macs": (_NUMBER, lambda v: v >= 0, "GMACs >= 0, e.g. 'target_macs=2.5'"),
    "speedup": (_NUMBER, lambda v: v == 0 or v >= 1, "0 or a factor >= 1, e.g. 'speedup=2'"),
    "speedup_by": ((str,), lambda v: v in ("macs", "latency"), "'macs' or 'latency'"),
    "target_latency": (_NUMBER, lambda v: v >= 0, "milliseconds >= 0, e.g. 'target_latency=20'"),
    "latency_backend": ((str,), lambda v: v in LATENCY_BACKENDS, "'onnxruntime', 'torch', 'cuda' or 'tensorrt'"),
    "sparse_epochs": ((int,), lambda v: v >= -1, "an integer >= 0, or -1 for a tenth of the fine-tune epochs"),
    "sparse_reg": (_NUMBER, lambda v: 0 < v <= 1, "a share 0 < sparse_reg <= 1, e.g. 'sparse_reg=0.9'"),
    "recalibrate": ((int,), lambda v: v >= 0, "a number of images >= 0, e.g. 'recalibrate=256'"),
    "reconstruct": ((int,), lambda v: v >= -1, "a number of images >= 0, e.g. 'reconstruct=256', or -1"),
    "max_map_drop": (_NUMBER, lambda v: 0 <= v <= 1, "a number between 0 and 1, e.g. 'max_map_drop=0.05'"),
    "finetune_epochs": ((int,), lambda v: v >= 0, "an integer >= 0, e.g. 'finetune_epochs=10'"),
    "onnx": ((bool,), lambda v: True, "True or False"),
    "distill": ((bool,), lambda v: True, "True or False"),
    "distill_loss": ((str,), lambda v: v in DISTILL_LOSSES, "'response' or 'feature'"),
    "distill_gain": (_NUMBER, lambda v: v > 0, "a number > 0, e.g. 'distill_gain=1.0'"),
    "threshold": (_NUMBER, lambda v: v >= 0, "a number >= 0, e.g. 'threshold=0.01'"),
    "min_channels": ((int,), lambda v: v >= 1, "an integer >= 1, e.g. 'min_channels=1'"),
}
SPARSE_SHARE = 0.1  # `sparse_epochs=-1`: this share of each step's fine-tune epochs, rounded (0 below 5 epochs)
_NOT_KEYS = {"augmentations", "save_dir"}  # set by Ultralytics' own code paths, never by a user


def check_prune_keys(known: dict, custom: dict) -> None:
    """Raise `UserError` for the keys of `custom` that `known` lacks, with Ultralytics' "did you mean" hint.

    Ultralytics' `check_dict_alignment` says the same but prints the whole CLI help first; this is one line per key.
    """
    lines = []
    for key in custom:
        if key not in known and key not in _NOT_KEYS:
            matches = [f"{k}={known[k]}" if known.get(k) is not None else k for k in get_close_matches(key, known)]
            hint = f" Similar arguments are i.e. {matches}." if matches else ""
            lines.append(f"'{key}' is not a valid YOLO argument.{hint}")
    if lines:
        raise UserError(" ".join(lines))


def check_prune_values(cfg: dict) -> None:
    """Raise `UserError` for an ultralytics-prune key of `cfg` with a wrong type or out of range."""
    for key, (types, valid, expected) in PRUNE_KEY_RULES.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise UserError(f"'{key}={value}' is of invalid type {type(value).__name__}. Valid '{key}' is {expected}.")
        if not valid(value):
            raise UserError(f"'{key}={value}' is an invalid value. Valid '{key}' is {expected}.")


def parse_hold(value: Any) -> list[str]:
    """Normalise the `hold` key (None, int, 'a,b' string or list) to a list of layer indices or names as strings."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def get_prune_cfg(
    cfg: str | Path | dict | SimpleNamespace = DEFAULT_PRUNE_CFG_DICT, overrides: dict | None = None
) -> IterableSimpleNamespace:
    """Ultralytics' `get_cfg` over the merged defaults, with every key, type and range checked.

    Our keys fill the gaps of `cfg` (Ultralytics' DDP launcher hands a trainer `DEFAULT_CFG_DICT`, which lacks them).

    Args:
        cfg: Base configuration (a yaml path, dict or namespace).
        overrides: The user's keys.

    Returns:
        (IterableSimpleNamespace): A new namespace; `hold` is a list of strings.

    Raises:
        UserError: An unknown key, or a value of the wrong type or out of range (ours or Ultralytics').
    """
    base = {**PRUNE_DEFAULTS, **cfg2dict(cfg)}
    overrides = cfg2dict(overrides) if overrides else {}
    check_prune_keys(base, overrides)
    try:
        args = vars(get_cfg(base, overrides))
    except (TypeError, ValueError, SyntaxError) as e:  # Ultralytics' own type and range checks of its keys
        raise UserError(" ".join(str(e).split())) from e
    check_prune_values(args)
    resolve_auto(args, set(overrides) | (set(cfg2dict(cfg)) if cfg is not DEFAULT_PRUNE_CFG_DICT else set()))
    widths_by = [k for k in ("sensitivity", "global_pruning", "latency_aware") if args.get(k)]
    if args.get("sensitivity") and len(widths_by) > 1:
        raise UserError(f"'sensitivity=True' and '{widths_by[1]}=True' both decide the per-layer widths: choose one")
    if args.get("latency_aware") and args.get("mode") == "slim":
        raise UserError("'latency_aware=True' works with 'yolo prune'; 'yolo slim' removes channels by BatchNorm scale")
    goals = [k for k in ("target_latency", "target_macs", "speedup") if args.get(k)]
    if len(goals) > 1:
        raise UserError(f"'{goals[0]}' and '{goals[1]}' both set where pruning stops: choose one")
    check_latency_backend(args)
    if args.get("method") == "unstructured":
        if args.get("mode") == "slim":
            raise UserError("'method=unstructured' is a 'yolo prune' method; 'yolo slim' removes channels")
        structured = ("target_macs", "target_latency", "speedup", "sensitivity", "global_pruning", "latency_aware")
        asked = [k for k in structured if args.get(k)]
        if asked:
            raise UserError(f"'{asked[0]}' does not apply to 'method=unstructured' (it zeroes weights, the MACs stay): "
                            f"use 'rate'")  # fmt: skip
    if args.get("sparse_epochs") and (args.get("mode") == "slim" or args.get("method") == "unstructured"):
        raise UserError("'sparse_epochs' trains toward a structured cut of 'yolo prune': use 'method=structured'")
    if args.get("attention") == "prune" and args.get("mode") == "slim":
        raise UserError("'attention=prune' works with 'yolo prune'; 'yolo slim' keeps attention heads whole")
    check_one_device(args)
    return IterableSimpleNamespace(**{**args, "hold": parse_hold(args.get("hold"))})


def resolve_auto(args: dict, given: set[str]) -> None:
    """Defaults that follow other keys, resolved in place so that `args.yaml` records what ran.

    `sensitivity` (on by default) decides the widths of a structured `yolo prune` only: where the user asked for
    another width policy (`global_pruning`, `latency_aware`), for unstructured pruning or in another mode it is off
    unless the user set it (then the checks below say what clashes). `sparse_epochs=-1` is `SPARSE_SHARE` of the
    fine-tune epochs of each step in a structured `yolo prune`, and 0 elsewhere. `reconstruct=-1` rebuilds after the
    cuts that no sparse epochs prepared (fine-tunes under 5 epochs, or `sparse_epochs=0`), on as many images as the
    run's budget gives (`reconstruct.rebuild_images`, resolved by the run), and is 0 elsewhere.
    """
    structured_prune = args.get("mode") == "prune" and args.get("method") == "structured"
    other_widths = args.get("global_pruning") or args.get("latency_aware")
    if "sensitivity" not in given and (not structured_prune or other_widths):
        args["sensitivity"] = False
    if args.get("sparse_epochs") == -1:
        args["sparse_epochs"] = int(args.get("finetune_epochs", 0) * SPARSE_SHARE + 0.5) if structured_prune else 0
    if args.get("reconstruct") == -1 and (args.get("sparse_epochs") or not structured_prune):
        args["reconstruct"] = 0  # sparse epochs leave the rebuilding nothing to repair (README Results)


def check_one_device(args: dict) -> None:
    """Refuse, before anything runs, a `yolo prune` on several devices with a fine-tune addition of ours that
    Ultralytics' DDP workers would not get (`errors.refuse_several_devices` says the same at the fine-tune itself).

    Raises:
        UserError: `device` lists several devices and `sparse_epochs` or response distillation is on.
    """
    device = args.get("device")
    devices = device if isinstance(device, (list, tuple)) else str(device or "").split(",")
    if args.get("mode") != "prune" or len(devices) < 2:
        return
    distill = (args.get("distill") or args.get("distill_model")) and args.get("distill_loss") == "response"
    for key, fix, on in (("sparse_epochs", "'sparse_epochs=0'", args.get("sparse_epochs")),
                         ("distill_loss=response", "'distill_loss=feature'", distill)):  # fmt: skip
        if on:
            raise UserError(f"'{key}' trains on one device (Ultralytics' DDP workers do not get it): use a single "
                            f"'device', or {fix}")  # fmt: skip


def check_latency_backend(args: dict) -> None:
    """Refuse a GPU `latency_backend` this machine cannot run, and a TensorRT latency table.

    Raises:
        UserError: No CUDA device for `cuda`/`tensorrt`; no TensorRT provider in onnxruntime; `latency_aware` on
            `tensorrt`, whose fused engine has no per-layer times.
    """
    backend = args.get("latency_backend")
    if backend in ("cuda", "tensorrt") and not cuda_available():
        raise UserError(f"'latency_backend={backend}' needs a CUDA device and there is none: use 'onnxruntime' or "
                        f"'torch'")  # fmt: skip
    if backend == "tensorrt":
        import onnxruntime

        if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
            raise UserError("'latency_backend=tensorrt' runs in onnxruntime's TensorRT provider, which this "
                            "onnxruntime lacks: 'pip install onnxruntime-gpu tensorrt', or use 'cuda'")  # fmt: skip
        if args.get("latency_aware"):
            raise UserError("'latency_aware=True' needs per-layer times, which a TensorRT engine does not give: use "
                            "'latency_backend=cuda' for the table")  # fmt: skip


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imported here only when asked)."""
    import torch

    return torch.cuda.is_available()


def ultralytics_args(args: SimpleNamespace | dict) -> IterableSimpleNamespace:
    """A copy of `args` without the ultralytics-prune keys, for Ultralytics classes that validate against theirs."""
    return IterableSimpleNamespace(**{k: v for k, v in cfg2dict(args).items() if k not in PRUNE_DEFAULTS})


def recipe_overrides(overrides: dict) -> dict:
    """The keys of a `prune` or `slim` run: the user's over the keys that continue the training of the input
    checkpoint (`continuation`: its optimizer, near the learning rate it ended at, no warmup, mosaic as it ended), and
    `epochs` (fine-tune epochs, 0 allowed) passed on as `finetune_epochs`."""
    overrides = continue_from(overrides.get("model"), overrides)
    if "epochs" in overrides:
        overrides["finetune_epochs"] = overrides.pop("epochs")
    return overrides
