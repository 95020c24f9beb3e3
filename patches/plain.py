"""The way back from the twins of `blocks`: Ultralytics' own `C2f`, `C3k2` and `C2PSA`, computing the same function.

What a run saves must load where only `pip install ultralytics` was run, so the twins' two input convs `cv0` and `cv1`
are merged back into one `cv1` whose output Ultralytics' block `chunk`s/`split`s into two halves of `c` channels.
Those halves must be equally wide: the pruning loop ties them (`widths.tie_halves`). A first half left narrower is
padded with channels that `cv2` reads with zero weights (the same function, a few more MACs); a first half wider than
the second cannot be expressed.

Examples:
    >>> from ultralytics.nn.tasks import DetectionModel
    >>> model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    >>> replace_blocks(model) == restore_blocks(model)
    True
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ultralytics.nn.modules.conv import Conv

from ultralytics_prune.patches.blocks import TWINS, empty_module, finish_block, swap_children

__all__ = ("PLAIN", "restore_blocks")

PLAIN: dict[type[nn.Module], type[nn.Module]] = {twin: block for block, twin in TWINS.items()}


def _padded(t: torch.Tensor, n: int, fill: float = 0.0) -> torch.Tensor:
    """`t` with `n` more entries of `fill` appended along its first axis."""
    return torch.cat([t, t.new_full((n, *t.shape[1:]), fill)]) if n else t


def _merge_convs(first: Conv, second: Conv, width: int) -> Conv:
    """One `Conv` computing ``cat(first(x), second(x))``, each part padded with constant channels to `width` outputs.

    The inverse of `_split_conv` for two parts. A padding channel has zero weights and a BatchNorm of weight 0 and
    bias 0, so it outputs act(0); the caller makes every reader of it read zeros.

    Args:
        first (Conv): Module computing the first `first.conv.out_channels` <= `width` outputs.
        second (Conv): Module computing the second part, with the same input, kernel and activation as `first`.
        width (int): Output channels of each half of the merged module.

    Returns:
        (Conv): A new module with ``2 * width`` outputs (the parameters are new tensors; `first` is left unchanged).
    """
    # the activation stays the very module it was (Ultralytics' Convs share one); the tensors are all replaced below
    memo = {id(t): t for t in (*first.parameters(), *first.buffers())}
    memo[id(first.act)] = first.act
    merged = copy.deepcopy(first, memo=memo)
    convs = [m for m in (first, second) if isinstance(m, Conv)]
    if len(convs) != 2 or first.conv.in_channels != second.conv.in_channels:
        raise ValueError("can only merge two Conv modules with the same input")
    pads = [width - p.conv.out_channels for p in (first, second)]
    if min(pads) < 0:
        raise ValueError(f"a half is wider than {width} channels")

    def cat(get, fill: float = 0.0) -> torch.Tensor:
        return torch.cat([_padded(get(p).detach(), n, fill) for p, n in zip((first, second), pads)]).clone()

    conv = merged.conv
    conv.out_channels = 2 * width
    conv.weight = nn.Parameter(cat(lambda p: p.conv.weight), requires_grad=first.conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(cat(lambda p: p.conv.bias), requires_grad=first.conv.bias.requires_grad)
    bn = getattr(merged, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        bn.num_features = 2 * width
        if bn.affine:
            bn.weight = nn.Parameter(cat(lambda p: p.bn.weight), requires_grad=first.bn.weight.requires_grad)
            bn.bias = nn.Parameter(cat(lambda p: p.bn.bias), requires_grad=first.bn.bias.requires_grad)
        if bn.track_running_stats:
            bn.running_mean = cat(lambda p: p.bn.running_mean)
            bn.running_var = cat(lambda p: p.bn.running_var, 1.0)
    return merged


def _pad_inputs(conv: Conv, at: int, n: int) -> None:
    """Insert `n` zero input channels into `conv` at input position `at`, in place (they are read by nothing)."""
    if n:
        w = conv.conv.weight
        zeros = w.new_zeros(w.shape[0], n, *w.shape[2:])
        conv.conv.weight = nn.Parameter(torch.cat([w[:, :at], zeros, w[:, at:]], 1).detach().clone(),
                                        requires_grad=w.requires_grad)  # fmt: skip
        conv.conv.in_channels += n


def _plain_with_merged_cv1(twin: nn.Module) -> nn.Module:
    """The Ultralytics block `twin` stands for (`PLAIN`), with `cv0` and `cv1` merged back into one `cv1`.

    Ultralytics' blocks `chunk`/`split` `cv1` into two equal halves of `c` channels. When pruning left the first half
    narrower than the second, it is padded with channels that `cv2` reads with zero weights: the same function, a
    few more MACs. A first half wider than the second cannot be expressed and raises.
    """
    a, b = twin.cv0.conv.out_channels, twin.cv1.conv.out_channels
    if a > b:
        raise ValueError(f"{type(twin).__name__}: the first half ({a} channels) is wider than the second ({b}); "
                         f"Ultralytics' {PLAIN[type(twin)].__name__} needs equal halves")  # fmt: skip
    plain = empty_module(PLAIN[type(twin)])
    plain.c = b
    plain.cv1 = _merge_convs(twin.cv0, twin.cv1, b)
    plain.cv2 = copy.deepcopy(twin.cv2) if a < b else twin.cv2
    _pad_inputs(plain.cv2, a, b - a)
    plain.m = twin.m
    return finish_block(plain, twin)


def restore_blocks(model: nn.Module) -> int:
    """Swap, in place, every twin in `model` back for the Ultralytics block it stands for (see the module doc).

    What a run saves holds only Ultralytics' classes, so `pip install ultralytics` alone loads it.

    Returns:
        (int): Number of blocks restored.
    """
    return swap_children(model, lambda m: _plain_with_merged_cv1(m) if type(m) in PLAIN else None)
