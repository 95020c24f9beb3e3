"""`attention=prune`: heads lose the same query/key channels, the layer stays Ultralytics' `Attention`, YOLO11 exports."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.channels.attention import PrunableAttention, fold_scale, prune_attention
from ultralytics_prune.checkpoint import foreign_modules, load_model, save_checkpoint
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


def test_heads_lose_the_same_query_key_channels_and_stay_ultralytics_attention():
    attn = trained_like(Attention(128, num_heads=2))
    pruned = copy.deepcopy(attn)
    x = torch.randn(2, 128, 6, 5)
    with torch.no_grad():
        reference = attn(x)
        assert prune_attention(pruned, 0.5) == attn.key_dim // 2
        out = pruned(x)
    assert type(pruned) is Attention and pruned.head_dim == attn.head_dim, "values stay: Ultralytics reshapes them"
    assert out.shape == reference.shape and 0 < float((out - reference).norm() / reference.norm()) < 1
    assert pruned.qkv.conv.out_channels == attn.qkv.conv.out_channels - 2 * 2 * (attn.key_dim // 2)
    assert pruned.scale == pytest.approx(pruned.key_dim**-0.5), "the trained scale is folded into the queries"
    assert prune_attention(pruned, 0.5) == attn.key_dim // 2, "cut from the original widths"
    assert prune_attention(pruned, 0.75) == attn.key_dim // 4


def test_folding_the_scale_keeps_the_function_and_the_coreml_path():
    attn = trained_like(Attention(128, num_heads=2))
    prune_attention(attn, 0.5)
    folded = copy.deepcopy(attn)
    fold_scale(folded, 0.3)
    x = torch.randn(1, 128, 5, 4)
    with torch.no_grad():
        reference = attn(x)
        assert torch.allclose(folded(x), reference, atol=1e-5)
        attn.format = "coreml"  # Ultralytics' CoreML path: scaled_dot_product_attention at its default scale
        assert torch.allclose(attn(x), reference, atol=1e-5)


def test_keeps_the_strongest_query_key_channel_of_every_head():
    """A query/key channel made strong in every head survives a cut to one channel per head."""
    attn = trained_like(Attention(64, num_heads=2))
    strong = 5
    with torch.no_grad():
        rows = attn.qkv.conv.weight.view(2, 2 * attn.key_dim + attn.head_dim, -1)
        rows[:, [strong, attn.key_dim + strong]] *= 100
    before = attn.qkv.conv.weight.detach().view(2, 2 * attn.key_dim + attn.head_dim, -1)[:, attn.key_dim + strong]
    prune_attention(attn, 1 - 1 / attn.key_dim)
    after = attn.qkv.conv.weight.detach().view(2, 2 + attn.head_dim, -1)[:, 1]  # the one key row of each head
    assert attn.key_dim == 1 and torch.equal(after, before)


def test_an_earlier_releases_twin_is_saved_as_ultralytics_attention(tmp_path):
    """`PrunableAttention` (saved by earlier releases) becomes `Attention` when its values were not cut."""
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    (attn,) = [m for m in model.modules() if type(m) is Attention]
    trained_like(attn)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(x)[0]
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is attn:
                setattr(parent, name, PrunableAttention.from_attention(attn))
    assert foreign_modules(model)
    loaded = load_model(save_checkpoint(model, tmp_path / "old.pt"))
    assert not foreign_modules(loaded)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x)[0], reference, atol=1e-3)
def test_yolo11_prune_attention_end_to_end(synthetic_data, tmp_path):
    """yolo11n with attention=prune: the qkv width falls, the model runs, the ONNX export matches PyTorch."""
    ckpt = save_checkpoint(DetectionModel("yolo11n.yaml", nc=3, verbose=False), tmp_path / "y11.pt")
    final = run_recipe("prune", {"model": str(ckpt), "data": str(synthetic_data), "imgsz": 64, "batch": 16,
                                 "workers": 0, "rate": 0.5, "iterative_steps": 1, "epochs": 0, "attention": "prune",
                                 "project": str(tmp_path / "runs"), "plots": False})  # fmt: skip
    model = load_model(final)
    (attn,) = [m for m in model.modules() if isinstance(m, Attention)]
    original = [m for m in load_model(ckpt).modules() if isinstance(m, Attention)][0]
    assert type(attn) is Attention and not foreign_modules(model)
    assert attn.qkv.conv.out_channels < original.qkv.conv.out_channels
    assert (attn.key_dim, attn.head_dim) == (original.key_dim // 2, original.head_dim)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert json.loads((final.parent.parent / "onnx_check.json").read_text())["match"]


def test_attention_prune_is_refused_for_slim(synthetic_data, tmp_path):
    with pytest.raises(UserError, match="'attention=prune' works with 'yolo prune'"):
        run_recipe("slim", {"model": str(tmp_path / "x.pt"), "data": str(synthetic_data), "attention": "prune"})
    with pytest.raises(SystemExit):
        entrypoint(f"yolo prune model={tmp_path / 'x.pt'} data={synthetic_data} attention=heads")
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_pickled_under_the_old_module_path_loads(tmp_path, monkeypatch):
    """Earlier releases pickled `PrunableAttention` as `ultralytics_prune.attention` (before the subpackages); such a
    file still loads (`checkpoint.MOVED_MODULES`)."""
    from ultralytics.nn.tasks import temporary_modules

    from ultralytics_prune.checkpoint import MOVED_MODULES

    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    (attn,) = [m for m in model.modules() if type(m) is Attention]
    trained_like(attn)
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is attn:
                setattr(parent, name, PrunableAttention.from_attention(attn))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.eval()(x)[0]
    monkeypatch.setattr(PrunableAttention, "__module__", "ultralytics_prune.attention")
    with temporary_modules(MOVED_MODULES):
        torch.save({"model": model, "train_args": {}}, tmp_path / "old.pt")
    monkeypatch.undo()
    assert b"ultralytics_prune.attention" in (tmp_path / "old.pt").read_bytes()
    loaded = load_model(tmp_path / "old.pt")
    assert [type(m).__name__ for m in loaded.modules() if isinstance(m, Attention)] == ["PrunableAttention"]
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x)[0], reference, atol=1e-5)
