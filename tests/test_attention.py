"""`attention=prune`: the attention twin is exact, heads lose the same channels, and a pruned YOLO11 exports."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.attention import PrunableAttention, prune_attention, replace_attention
from ultralytics_prune.checkpoint import load_model, save_checkpoint
from ultralytics_prune.cli import entrypoint
from ultralytics_prune.errors import UserError
from ultralytics_prune.model import run_recipe


def trained_like(attn: Attention, seed: int = 0) -> Attention:
    """Give every BatchNorm of `attn` non-trivial statistics, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return attn.eval()


def test_twin_is_exact_and_heads_lose_the_same_channels():
    attn = trained_like(Attention(128, num_heads=2))
    twin = PrunableAttention.from_attention(copy.deepcopy(attn))
    x = torch.randn(2, 128, 6, 5)
    with torch.no_grad():
        reference = attn(x)
        assert torch.equal(twin(x), reference)
        assert prune_attention(twin, 0.5) == (attn.key_dim // 2, attn.head_dim // 2)
        out = twin(x)
    assert out.shape == reference.shape and 0 < float((out - reference).norm() / reference.norm()) < 1
    assert twin.qkv.conv.out_channels == attn.qkv.conv.out_channels // 2
    assert twin.pe.conv.groups == twin.pe.conv.in_channels == twin.pe.conv.out_channels == 2 * attn.head_dim // 2
    assert twin.proj.conv.in_channels == twin.pe.conv.out_channels and twin.scale == attn.scale
    assert prune_attention(twin, 0.5) == (attn.key_dim // 2, attn.head_dim // 2), "cut from the original widths"


def test_keeps_the_strongest_channel_of_every_head():
    """A value channel made strong in every head survives a cut to one channel per head."""
    attn = trained_like(Attention(64, num_heads=2))
    twin = PrunableAttention.from_attention(attn)
    strong = 5
    with torch.no_grad():
        rows = twin.qkv.conv.weight.view(2, 2 * twin.key_dim + twin.head_dim, -1)
        rows[:, 2 * twin.key_dim + strong] *= 100
    before = twin.qkv.conv.weight.detach().view(2, 2 * twin.key_dim + twin.head_dim, -1)[:, 2 * twin.key_dim + strong]
    prune_attention(twin, 1 - 1 / twin.head_dim)
    after = twin.qkv.conv.weight.detach().view(2, 2 * twin.key_dim + 1, -1)[:, -1]
    assert torch.equal(after, before)


def test_yolo11_prune_attention_end_to_end(synthetic_data, tmp_path):
    """yolo11n with attention=prune: the qkv width falls, the model runs, the ONNX export matches PyTorch."""
    ckpt = save_checkpoint(DetectionModel("yolo11n.yaml", nc=3, verbose=False), tmp_path / "y11.pt")
    final = run_recipe("prune", {"model": str(ckpt), "data": str(synthetic_data), "imgsz": 64, "batch": 16,
                                 "workers": 0, "rate": 0.5, "iterative_steps": 1, "epochs": 0, "attention": "prune",
                                 "project": str(tmp_path / "runs"), "plots": False})  # fmt: skip
    model = load_model(final)
    (attn,) = [m for m in model.modules() if isinstance(m, PrunableAttention)]
    original = [m for m in load_model(ckpt).modules() if isinstance(m, Attention)][0]
    assert attn.qkv.conv.out_channels <= original.qkv.conv.out_channels // 2
    assert (attn.key_dim, attn.head_dim) == (original.key_dim // 2, original.head_dim // 2)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert json.loads((final.parent.parent / "onnx_check.json").read_text())["match"]


def test_attention_prune_is_refused_for_slim(synthetic_data, tmp_path):
    with pytest.raises(UserError, match="'attention=prune' works with 'yolo prune'"):
        run_recipe("slim", {"model": str(tmp_path / "x.pt"), "data": str(synthetic_data), "attention": "prune"})
    with pytest.raises(SystemExit):
        entrypoint(f"yolo prune model={tmp_path / 'x.pt'} data={synthetic_data} attention=heads")
    assert not any(tmp_path.iterdir())


def test_replace_attention_counts():
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    assert replace_attention(model) == 1 and replace_attention(model) == 0
