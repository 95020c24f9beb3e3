"""Channel dependency graph of an Ultralytics detection model, built with torch-pruning (DepGraph).

The graph answers one question for both recipes: which channels may be removed together. Everything a trace needs
(the example input, the layers held by the user, the tracer settings) lives here, so the graph and the pruner trace
alike. Three Ultralytics details need care when tracing:

- the Detect head's last convolutions have a channel count fixed by the classes and the box coding: held;
- attention blocks reshape channels into heads; tracing through them makes torch-pruning's index mapping grow
  without bound, so each `Attention` is traced as one opaque layer whose channels are held whole;
- YOLO26's end-to-end head feeds its one-to-one branch from `x.detach()` in training mode; tracing is done in
  eval mode on the raw head outputs of both branches, so both stay coupled to the backbone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner.function import BasePruningFunc
from ultralytics.nn.modules import Detect
from ultralytics.nn.modules.block import AAttn, Attention

from ultralytics_prune.checkpoint import make_trainable
from ultralytics_prune.errors import UserError
from ultralytics_prune.patches.blocks import TWINS, replace_blocks

ATTENTION_TYPES = (Attention, AAttn)


class HeldAttentionPruner(BasePruningFunc):
    """Pruning rule for an attention layer held whole: it reports its channels and never removes any.

    Groups that would remove channels of a held layer are skipped by `prunable_groups`, so the prune functions
    are never reached in normal use; they raise to make a wrong call loud instead of silently breaking heads.
    """

    TARGET_MODULES = ATTENTION_TYPES

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Refuse: the channels of a held attention layer are fixed by its heads."""
        raise RuntimeError(f"{type(layer).__name__} is held whole and cannot lose channels")

    prune_in_channels = prune_out_channels  # in and out channels are one dimension (residual around the layer)

    def get_out_channels(self, layer: nn.Module) -> int:
        """Number of output channels (the projection's)."""
        return layer.proj.conv.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        """Number of input channels (the qkv convolution's)."""
        return layer.qkv.conv.in_channels


@contextmanager
def opaque_attention(model: nn.Module) -> Iterator[None]:
    """While active, every attention layer of `model` looks to a trace like one element-wise op (`_opaque_output`)."""
    hooks = [m.register_forward_hook(_opaque_output) for m in model.modules() if isinstance(m, ATTENTION_TYPES)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _opaque_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook that makes a module's output depend on its input through one element-wise op only.

    The value is unchanged; autograd sees `x * 0 + y.detach()`, so the trace couples the module's input and output
    channels one to one and never walks its internal reshapes.
    """
    return inputs[0] * 0 + output.detach()


def detect_heads(model: nn.Module) -> list[nn.Module]:
    """Return every Detect-family head (Detect, Segment, Pose, OBB and their YOLO26 variants) in the model."""
    return [m for m in model.modules() if isinstance(m, Detect)]


def head_output_convs(model: nn.Module) -> list[nn.Module]:
    """Return the output convolutions of the heads, whose channel count is fixed by classes and box coding."""
    held = []
    for head in detect_heads(model):
        for name in ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4"):
            branches = getattr(head, name, None)
            if isinstance(branches, nn.ModuleList):
                held.extend(branch[-1] if isinstance(branch, nn.Sequential) else branch for branch in branches)
        if isinstance(getattr(head, "dfl", None), nn.Module):
            held.append(head.dfl)
    return held


def attention_pruners() -> dict:
    """torch-pruning rules for the layer types traced as opaque (attention held whole)."""
    return {t: HeldAttentionPruner() for t in ATTENTION_TYPES}


def held_layers(model: nn.Module, extra: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Layers whose output channels must not change: head outputs, attention layers and any `extra` ones."""
    return head_output_convs(model) + [m for m in model.modules() if isinstance(m, ATTENTION_TYPES)] + list(extra)


def raw_head_outputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Forward in eval mode and return the raw box/score tensors of every head branch (no decoding)."""
    out = model(images)
    preds = out[1] if isinstance(out, (tuple, list)) and len(out) == 2 else out
    tensors = []

    def collect(obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key != "feats":
                    collect(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                collect(value)
        elif isinstance(obj, torch.Tensor):
            tensors.append(obj)

    collect(preds)
    return tensors


def example_input(model: nn.Module, imgsz: int) -> torch.Tensor:
    """A zero image batch of one, `imgsz` x `imgsz`, on the model's device."""
    return torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device)


def hold_modules(model: nn.Module, hold: Iterable[str]) -> list[nn.Module]:
    """Resolve `hold` entries (layer indices like '22' or module names like 'model.9.cv2') to modules.

    Raises:
        UserError: An entry names no module of `model`.
    """
    named = dict(model.named_modules())
    modules = []
    for key in hold:
        name = f"model.{key}" if key.isdigit() else key
        if name not in named:
            raise UserError(f"'hold={key}' names no layer of the model; use a layer index or a module name")
        modules.append(named[name])
    return modules


def trace_settings() -> dict:
    """Keyword arguments that every torch-pruning trace of a model takes (the graph's and the pruner's)."""
    return {"forward_fn": raw_head_outputs, "customized_pruners": attention_pruners()}


@contextmanager
def tracing(model: nn.Module) -> Iterator[None]:
    """While active, `model` can be traced: gradients on for every parameter, attention layers opaque."""
    make_trainable(model)  # Ultralytics checkpoints come with gradients off; tracing needs autograd
    with opaque_attention(model), torch.enable_grad():
        yield


def build_graph(model: nn.Module, imgsz: int = 64) -> tp.DependencyGraph:
    """Trace `model` into a torch-pruning dependency graph.

    Args:
        model (nn.Module): An Ultralytics detection model (`DetectionModel`), on any device.
        imgsz (int): Side of the square example input used for tracing; any multiple of the largest stride works.

    Returns:
        (tp.DependencyGraph): The graph; every parameter of the model is left with gradients on.
    """
    with tracing(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input(model, imgsz), verbose=False, **trace_settings()
        )


def prunable_groups(
    graph: tp.DependencyGraph, held: Sequence[nn.Module], root_types: tuple = (nn.Conv2d,)
) -> Iterator[tp.Group]:
    """Yield every group of coupled channels that can be removed without touching a held layer or its submodules."""
    ignored = list({id(sub): sub for m in held for sub in m.modules()}.values())
    yield from graph.get_all_groups(ignored_layers=ignored, root_module_types=root_types)


def prunable_batchnorms(model: nn.Module, imgsz: int = 64) -> list[nn.BatchNorm2d]:
    """Return the BatchNorm layers whose channels the dependency graph allows to remove.

    A BatchNorm is prunable when it sits in a group of coupled channels (through residual adds, concat and split)
    that touches no held layer. The graph is traced on a copy with the prunable block twins swapped in, because
    torch-pruning cannot follow the `chunk`/`split` of the originals; a split BatchNorm of an original block is
    prunable when either of its twin halves is. The model itself is not modified.

    Args:
        model (nn.Module): The model to analyse.
        imgsz (int): Side of the example input used for tracing.

    Returns:
        (list[nn.BatchNorm2d]): The prunable BatchNorm layers of `model`, in module order.
    """
    probe = copy.deepcopy(model).float()
    replace_blocks(probe)
    graph = build_graph(probe, imgsz)
    found = set()
    for group in prunable_groups(graph, held_layers(probe)):
        found.update(dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.BatchNorm2d))
    prunable_names = {name for name, m in probe.named_modules() if m in found}

    aliases = {}  # original split BatchNorm name -> names of its halves in the twin
    for name, block in model.named_modules():
        if type(block) in TWINS:
            aliases[f"{name}.cv1.bn"] = (f"{name}.cv0.bn", f"{name}.cv1.bn")
    return [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and prunable_names.intersection(aliases.get(name, (name,)))
    ]


def conv_bn_pairs(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Map each convolution to the BatchNorm applied right after it (Ultralytics `Conv`, `DWConv`: `.conv` + `.bn`)."""
    return {
        m.conv: m.bn
        for m in model.modules()
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
    }


def is_out_channels(graph: tp.DependencyGraph, item) -> bool:
    """True when the group item removes output channels of its layer (it produces the channels)."""
    return graph.is_out_channel_pruning_fn(item.dep.handler)
