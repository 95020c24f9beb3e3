"""`attention=prune`: the same channels removed in every head of an attention layer (C2PSA's `Attention`).

Ultralytics' `Attention` computes one `qkv` convolution whose output is, head by head, `key_dim` query, `key_dim` key
and `head_dim` value channels; the values of all heads, plus a depthwise positional encoding `pe` of them, go through
`proj` back to the layer's width. A head's channels cannot be removed by the dependency graph (the heads are a
reshape, see `graph`), so here, at every step, each head keeps the same query/key channels and the same value
channels, chosen by their weight magnitude summed over the heads. The layer's outer width (its input, `proj`'s output
and the residual around it) stays as the graph holds it.

`PrunableAttention` is the twin this needs: the same function as `Attention`, with its reshapes written for any
value width and its softmax scale kept as trained (`key_dim ** -0.5` of the unpruned layer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules.block import Attention

from ultralytics_prune.widths import kept_width


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


def replace_attention(model: nn.Module) -> int:
    """Swap every `Attention` of `model` for its `PrunableAttention` twin, in place; return how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is Attention:
                setattr(parent, name, PrunableAttention.from_attention(child))
                swapped += 1
    return swapped


def _effective_rows(conv_module: nn.Module) -> torch.Tensor:
    """The output-channel rows of an Ultralytics `Conv`'s weight, scaled by its BatchNorm (when it has one)."""
    w = conv_module.conv.weight.detach().flatten(1)
    bn = getattr(conv_module, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        w = w * (bn.weight.detach() / (bn.running_var + bn.eps).sqrt()).unsqueeze(1)
    return w


def _keep_channels(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, out_idx: torch.Tensor | None,
                   in_idx: torch.Tensor | None) -> None:  # fmt: skip
    """Keep only `out_idx` output and `in_idx` input channels of `conv` (and `out_idx` of `bn`), in place."""
    with torch.no_grad():
        weight = conv.weight
        if out_idx is not None:
            weight = weight[out_idx]
            if conv.bias is not None:
                conv.bias = nn.Parameter(conv.bias[out_idx].clone())
            conv.out_channels = len(out_idx)
            if bn is not None:
                bn.weight, bn.bias = nn.Parameter(bn.weight[out_idx].clone()), nn.Parameter(bn.bias[out_idx].clone())
                bn.running_mean, bn.running_var = bn.running_mean[out_idx].clone(), bn.running_var[out_idx].clone()
                bn.num_features = len(out_idx)
        if in_idx is not None:
            weight = weight[:, in_idx]
            conv.in_channels = len(in_idx) * conv.groups
        conv.weight = nn.Parameter(weight.clone())


def prune_attention(attn: PrunableAttention, ratio: float, round_to: int = 1) -> tuple[int, int]:
    """Cut every head of `attn` to `1 - ratio` of its original query/key and value channels (the same in each head).

    A query/key channel scores the product of its query and key weight norms, a value channel its value weight norm
    times the norm of the `proj` column that reads it, both summed over the heads (BatchNorm scales included).

    Returns:
        (tuple[int, int]): The new `key_dim` and `head_dim`.
    """
    nh, kd, hd = attn.num_heads, attn.key_dim, attn.head_dim
    new_kd = min(kd, kept_width(attn.original_dims[0], ratio, round_to, kd))
    new_hd = min(hd, kept_width(attn.original_dims[1], ratio, round_to, hd))
    if (new_kd, new_hd) == (kd, hd):
        return kd, hd
    rows = _effective_rows(attn.qkv).norm(dim=1).view(nh, 2 * kd + hd)
    proj_cols = attn.proj.conv.weight.detach().flatten(1).norm(dim=0).view(nh, hd)
    qk_score = (rows[:, :kd] * rows[:, kd:2 * kd]).sum(0)
    v_score = (rows[:, 2 * kd:] * proj_cols).sum(0)
    keep_qk = torch.argsort(qk_score, descending=True, stable=True)[:new_kd].sort().values
    keep_v = torch.argsort(v_score, descending=True, stable=True)[:new_hd].sort().values
    per_head = torch.cat([keep_qk, kd + keep_qk, 2 * kd + keep_v])
    qkv_out = torch.cat([h * (2 * kd + hd) + per_head for h in range(nh)])
    values = torch.cat([h * hd + keep_v for h in range(nh)])
    _keep_channels(attn.qkv.conv, getattr(attn.qkv, "bn", None), qkv_out, None)
    _keep_channels(attn.pe.conv, getattr(attn.pe, "bn", None), values, None)  # depthwise: one input per group
    attn.pe.conv.groups = attn.pe.conv.in_channels = len(values)
    _keep_channels(attn.proj.conv, None, None, values)
    attn.key_dim, attn.head_dim = new_kd, new_hd
    return new_kd, new_hd
