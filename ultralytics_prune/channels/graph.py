"""Channel dependency graph of an Ultralytics detection model, built with torch-pruning (DepGraph).

The graph answers one question for both recipes: which channels may be removed together. Everything a trace needs
(the example input, the layers held by the user, the tracer settings) lives here, so the graph and the pruner trace
alike. Three Ultralytics details need care when tracing:

- the Detect head's last convolutions have a channel count fixed by the classes and the box coding: held;
- attention blocks reshape channels into heads; tracing through them makes torch-pruning's index mapping grow
  without bound, so each `Attention` is traced as one opaque layer whose channels are held whole;
- YOLO26's end-to-end head feeds its one-to-one branch from `x.detach()` in training mode; tracing is done in
  eval mode on the raw head outputs of both branches, so both stay coupled to the backbone;
- some branches run in training mode only (YOLO26 pose's keypoint sigmas, YOLO26 segment's semantic head): an
  eval-mode trace would not see them and pruning their inputs would break training, so while tracing a hook runs
  each on the features it reads and its output joins the traced outputs;
- the task outputs have fixed widths too: mask coefficients and prototypes (segment), keypoints and their sigmas
  (pose), the angle (OBB), the semantic classes (YOLO26 segment): held.
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


HEAD_BRANCHES = ("cv2", "cv3", "cv4", "cv4_kpts", "cv4_sigma")  # each also as `one2one_<name>` (end-to-end heads)


def head_output_convs(model: nn.Module) -> list[nn.Module]:
    """Return the output layers of the heads, whose channel count is fixed by the task.

    Those are the last layer of every branch (boxes, classes, mask coefficients, keypoints and their sigmas, angle),
    the DFL projection, the prototype output of a segment head and the semantic output of YOLO26's.
    """
    held = []
    for head in detect_heads(model):
        for name in HEAD_BRANCHES + tuple(f"one2one_{n}" for n in HEAD_BRANCHES):
            branches = getattr(head, name, None)
            if isinstance(branches, nn.ModuleList):
                held.extend(branch[-1] if isinstance(branch, nn.Sequential) else branch for branch in branches)
        proto = getattr(head, "proto", None)
        held.extend(m for m in (getattr(head, "dfl", None), getattr(proto, "cv3", None)) if isinstance(m, nn.Module))
        if isinstance(getattr(proto, "semseg", None), nn.Sequential):
            held.append(proto.semseg[-1])
    return held


def training_only_branches(model: nn.Module) -> list[tuple[nn.Module, nn.Module, str]]:
    """(source, branch, "input"|"output") for every head branch that runs in training mode only.

    `branch` reads the input or the output of `source`: YOLO26 pose's `cv4_sigma[i]` reads what `cv4[i]` gives,
    YOLO26 segment's `proto.semseg` reads what `proto.feat_fuse` is given.
    """
    found = []
    for head in detect_heads(model):
        for prefix in ("", "one2one_"):
            features, sigmas = getattr(head, f"{prefix}cv4", None), getattr(head, f"{prefix}cv4_sigma", None)
            if isinstance(features, nn.ModuleList) and isinstance(sigmas, nn.ModuleList):
                found.extend((f, s, "output") for f, s in zip(features, sigmas))
        proto = getattr(head, "proto", None)
        if isinstance(getattr(proto, "semseg", None), nn.Module) and isinstance(getattr(proto, "feat_fuse", None),
                                                                                 nn.Module):  # fmt: skip
            found.append((proto.feat_fuse, proto.semseg, "input"))
    return found


@contextmanager
def traced_training_branches(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every training-only branch runs beside its source; yields the list their outputs go to."""
    outputs: list[torch.Tensor] = []

    def hook_for(branch: nn.Module, reads: str):
        def run_branch(module, inputs, output):
            outputs.append(branch(inputs[0] if reads == "input" else output))

        return run_branch

    hooks = [src.register_forward_hook(hook_for(b, reads)) for src, b, reads in training_only_branches(model)]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def attention_pruners() -> dict:
    """torch-pruning rules for the layer types traced as opaque (attention held whole)."""
    return {t: HeldAttentionPruner() for t in ATTENTION_TYPES}


def held_layers(model: nn.Module, extra: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Layers whose output channels must not change: head outputs, attention layers and any `extra` ones."""
    return head_output_convs(model) + [m for m in model.modules() if isinstance(m, ATTENTION_TYPES)] + list(extra)


TRAINING_OUTPUTS = "_traced_training_outputs"  # attribute holding the training-only outputs during a trace


def raw_head_outputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Forward in eval mode and return the raw tensors of every head branch (no decoding).

    Inside `tracing`, the outputs of the training-only branches come too.
    """
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
    extra = model.__dict__.get(TRAINING_OUTPUTS)
    if extra:  # handed over once: a second forward collects its own
        tensors.extend(extra)
        extra.clear()
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
    for p in model.parameters():  # Ultralytics checkpoints come with gradients off; tracing needs autograd
        p.requires_grad_(True)
    with opaque_attention(model), traced_training_branches(model) as extra, torch.enable_grad():
        model.__dict__[TRAINING_OUTPUTS] = extra
        try:
            yield
        finally:
            model.__dict__.pop(TRAINING_OUTPUTS, None)


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


def twin_halves(model: nn.Module, graph: tp.DependencyGraph, groups: Sequence) -> list[tuple[int | None, int | None]]:
    """For every block twin of `model`, the indices in `groups` of the groups producing its two halves (`cv0`, `cv1`).

    Ultralytics' `C2f`, `C3k2` and `C2PSA` split one conv into two equal halves, so what a run saves (plain
    Ultralytics blocks, see `patches.plain.restore_blocks`) needs both halves of a twin equally wide. None marks a
    half that no group in `groups` produces: it is held, and so must its sibling be.
    """
    producer = {}
    for index, group in enumerate(groups):
        for item in group.items:
            if is_out_channels(graph, item):
                producer.setdefault(item.dep.target.module, index)
    twins = tuple(TWINS.values())
    return [(producer.get(m.cv0.conv), producer.get(m.cv1.conv)) for m in model.modules() if isinstance(m, twins)]
