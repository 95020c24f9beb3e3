"""`attention=prune`: the same query/key channels removed in every head of an attention layer (C2PSA's `Attention`).

Ultralytics' `Attention` computes one `qkv` convolution whose output is, head by head, `key_dim` query, `key_dim` key
and `head_dim` value channels; the values of all heads, plus a depthwise positional encoding `pe` of them, go through
`proj` back to the layer's width. A head's channels cannot be removed by the dependency graph (the heads are a
reshape, see `graph`), so here, at every step, each head keeps the same query/key channels, chosen by their weight
magnitude summed over the heads. The value channels and the layer's outer width (its input, `proj`'s output and the
residual around it) stay: Ultralytics' `Attention` reshapes the values to the layer's width, so a layer with fewer
value channels would need a class of ours to load, and what a run saves must load in plain Ultralytics.

The pruned layer stays Ultralytics' own `Attention` with its `key_dim` set. Its trained softmax scale is folded into
the query rows, so `scale` is `key_dim ** -0.5` of the pruned layer, as Ultralytics' CoreML path assumes.
`PrunableAttention` is the twin earlier releases saved (value channels pruned too); it still loads, and converts back
to `Attention` where its values were not cut.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules.block import Attention

from ultralytics_prune.channels.widths import kept_width


class PrunableAttention(Attention):
    """Ultralytics' `Attention` with its reshapes written for pruned heads (`key_dim`, `head_dim` as stored).

    Attributes:
        original_dims (tuple[int, int]): `key_dim` and `head_dim` before any pruning (widths are cut from these).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the H*W positions, per head, as in `Attention.forward`."""
        B, _, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.key_dim * 2 + self.head_dim, H * W).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2
        )
        if self.format == "coreml" and hasattr(F, "scaled_dot_product_attention"):
            out = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1),
                                                 scale=self.scale).transpose(-2, -1)  # fmt: skip
        else:
            out = v @ ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1).transpose(-2, -1)
        values = v.reshape(B, -1, H, W)
        return self.proj(out.reshape(B, -1, H, W) + self.pe(values))

    @classmethod
    def from_attention(cls, attn: Attention) -> PrunableAttention:
        """The same layer (same parameter objects) as a `PrunableAttention`."""
        twin = cls.__new__(cls)
        twin.__dict__.update(attn.__dict__)
        twin.original_dims = (attn.key_dim, attn.head_dim)
        return twin


def _effective_rows(conv_module: nn.Module) -> torch.Tensor:
    """The output-channel rows of an Ultralytics `Conv`'s weight, scaled by its BatchNorm (when it has one)."""
    w = conv_module.conv.weight.detach().flatten(1)
    bn = getattr(conv_module, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        w = w * (bn.weight.detach() / (bn.running_var + bn.eps).sqrt()).unsqueeze(1)
    return w


def _keep_outputs(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, keep: torch.Tensor) -> None:
    """Keep only the output channels `keep` of `conv` (and of `bn`), in place."""
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight[keep].clone())
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias[keep].clone())
        conv.out_channels = len(keep)
        if bn is not None:
            bn.weight, bn.bias = nn.Parameter(bn.weight[keep].clone()), nn.Parameter(bn.bias[keep].clone())
            bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
            bn.num_features = len(keep)


def fold_scale(attn: Attention, scale: float) -> None:
    """Set `attn.scale` to `scale`, multiplying the query rows of `qkv` so the layer computes the same function."""
    factor = attn.scale / scale
    kd, rows = attn.key_dim, 2 * attn.key_dim + attn.head_dim
    queries = torch.cat([h * rows + torch.arange(kd) for h in range(attn.num_heads)])
    conv, bn = attn.qkv.conv, getattr(attn.qkv, "bn", None)
    with torch.no_grad():
        if isinstance(bn, nn.BatchNorm2d):  # BN is affine in a Conv: its weight and bias scale the output
            bn.weight[queries] *= factor
            bn.bias[queries] *= factor
        else:  # fused: the conv's own weight and bias
            conv.weight[queries] *= factor
            if conv.bias is not None:
                conv.bias[queries] *= factor
    attn.scale = scale


def prune_attention(attn: Attention, ratio: float, round_to: int = 1) -> int:
    """Cut every head of `attn` to `1 - ratio` of its original query/key channels (the same in each head), in place.

    A query/key channel scores the product of its query and key weight norms summed over the heads (BatchNorm scales
    included). The first call records the layer's original `key_dim` (`attn.original_key_dim`), so later steps cut
    from it and rounding never compounds.

    Returns:
        (int): The new `key_dim`.
    """
    if not hasattr(attn, "original_key_dim"):
        attn.original_key_dim = getattr(attn, "original_dims", (attn.key_dim,))[0]
    nh, kd, hd = attn.num_heads, attn.key_dim, attn.head_dim
    new_kd = min(kd, kept_width(attn.original_key_dim, ratio, round_to, kd))
    if new_kd == kd:
        return kd
    rows = _effective_rows(attn.qkv).norm(dim=1).view(nh, 2 * kd + hd)
    qk_score = (rows[:, :kd] * rows[:, kd : 2 * kd]).sum(0)
    keep_qk = torch.argsort(qk_score, descending=True, stable=True)[:new_kd].sort().values
    per_head = torch.cat([keep_qk, kd + keep_qk, 2 * kd + torch.arange(hd)])
    qkv_out = torch.cat([h * (2 * kd + hd) + per_head for h in range(nh)])
    _keep_outputs(attn.qkv.conv, getattr(attn.qkv, "bn", None), qkv_out)
    attn.key_dim = new_kd
    fold_scale(attn, new_kd**-0.5)
    return new_kd


def restore_attention(model: nn.Module) -> int:
    """Swap every `PrunableAttention` of `model` whose value channels were not cut back for Ultralytics' `Attention`,
    in place; return how many. One with fewer value channels than its width (saved by an earlier release) stays."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is PrunableAttention and child.head_dim * child.num_heads == child.proj.conv.out_channels:
                plain = Attention.__new__(Attention)
                plain.__dict__.update(child.__dict__)
                plain.__dict__.pop("original_dims", None)
                plain.original_key_dim = child.original_dims[0]
                fold_scale(plain, plain.key_dim**-0.5)
                setattr(parent, name, plain)
                swapped += 1
    return swapped
