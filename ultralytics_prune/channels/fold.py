"""Folding a removed channel's constant output into the convolutions that read it, before it is removed.

A channel whose BatchNorm gamma is zero is not silent: it outputs the constant act(beta). Folding that constant into
every consumer (its bias, or the running mean of the BatchNorm behind it) makes removing the channel lossless for 1x1
consumers and exact away from the zero-padded border for kxk consumers. The constants are read from one forward pass,
so residual adds, concatenations, upsampling and max-pooling between producer and consumer need no special rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ultralytics_prune.channels.graph import raw_head_outputs


def relative_diff(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max |a - b| over all tensors, divided by max |b| (both lists of the same shapes)."""
    if not reference:
        return 0.0
    diff = max(float((a - b).abs().max()) if b.numel() else 0.0 for a, b in zip(outputs, reference))
    scale = max(float(b.abs().max()) if b.numel() else 0.0 for b in reference)
    return diff / max(scale, 1e-12)


@torch.no_grad()
def capture_inputs(model: nn.Module, x: torch.Tensor, wanted: dict[nn.Conv2d, list[int]]):
    """Run `model` once; return its raw head outputs and, per conv in `wanted`, its input at those channels."""
    seen = {}

    def hook(module, inputs):
        seen[module] = inputs[0][:, wanted[module]].detach().clone()

    handles = [conv.register_forward_pre_hook(hook) for conv in wanted]
    try:
        outputs = [t.detach().clone() for t in raw_head_outputs(model, x)]
    finally:
        for h in handles:
            h.remove()
    return outputs, seen


@torch.no_grad()
def fold_into_consumer(conv: nn.Conv2d, idxs: Sequence[int], values: torch.Tensor, bn: nn.BatchNorm2d | None) -> None:
    """Make `conv` behave as if its input channels `idxs` still carried the constants `values` once they are removed.

    The missing contribution is sum over the kernel of W[:, c] * value (exact for 1x1 kernels; at the border of a
    zero-padded kxk conv fewer taps hit real pixels, so there it is approximate). It goes into the conv's bias, or,
    for a conv without bias followed by BatchNorm, into the running mean: bn(y - d) with mean - d equals bn(y).
    """
    w = conv.weight.detach()[:, list(idxs)].sum(dim=(2, 3))  # (out, k)
    delta = w @ values.to(w)
    if conv.bias is not None:
        conv.bias.add_(delta)
    elif bn is not None:
        bn.running_mean.sub_(delta.to(bn.running_mean))
    else:
        conv.bias = nn.Parameter(delta.clone(), requires_grad=conv.weight.requires_grad)


def fold_constant_inputs(
    model: nn.Module, x: torch.Tensor, wanted: dict[nn.Conv2d, list[int]], conv_bn: dict, fold: bool = True
) -> tuple[list[torch.Tensor], int, int]:
    """Read what every consumer in `wanted` sees at its channels about to be removed, and fold the constant ones in.

    Call it after the removed channels' gammas were set to 0 and before they are removed. An input channel is folded
    when it is constant over the batch (to 1e-5 relative) and its consumer is not grouped.

    Args:
        model (nn.Module): The model, eval mode.
        x (torch.Tensor): Example images.
        wanted (dict[nn.Conv2d, list[int]]): Consumer convolution -> its input channels that will be removed.
        conv_bn (dict): Convolution -> the BatchNorm behind it (see `slim_select.conv_bn_pairs`).
        fold (bool): Fold (True) or only count (False).

    Returns:
        (tuple): The raw head outputs of this forward pass, the number of (consumer, channel) pairs folded and the
            number left unfolded.
    """
    outputs, seen = capture_inputs(model, x, wanted)
    if not fold:
        return outputs, 0, sum(len(v) for v in wanted.values())
    folded = unfolded = 0
    for conv, idxs in wanted.items():
        values = seen.get(conv)
        if values is None:  # not reached by the forward pass
            unfolded += len(idxs)
            continue
        flat = values.transpose(0, 1).flatten(1)  # (k, B*H*W)
        const = flat.mean(1)
        constant = (flat.max(1).values - flat.min(1).values) <= 1e-5 * (1 + const.abs())
        if conv.groups != 1:
            constant[:] = False
        unfolded += int((~constant).sum())
        if constant.any():
            chosen = [i for i, ok in zip(idxs, constant.tolist()) if ok]
            fold_into_consumer(conv, chosen, const[constant], conv_bn.get(conv))
            folded += len(chosen)
    return outputs, folded, unfolded
