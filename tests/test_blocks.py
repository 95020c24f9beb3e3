"""Tests for the prunable block twins in `ultralytics_prune.patches.blocks`."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C2f, C3k2
from ultralytics.nn.tasks import DetectionModel
from ultralytics_prune.patches.blocks import TWINS, C2f_v2, C2PSA_v2, C3k2_v2, replace_blocks

YAMLS = ("yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml")
ORIGINALS = (C2f, C3k2, C2PSA)
IMGSZ = 96


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def flatten(out) -> list[torch.Tensor]:
    """Flatten a nested output structure (tensor / tuple / list / dict) into a list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten(o)]
    return []


def assert_same_outputs(actual, expected, rtol: float = 1e-5) -> None:
    """Assert that two nested outputs hold the same tensors up to `rtol` relative to each tensor's scale."""
    a, e = flatten(actual), flatten(expected)
    assert len(a) == len(e) > 0
    for x, y in zip(a, e):
        assert x.shape == y.shape
        scale = max(y.abs().max().item(), 1e-6)
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * scale)


def run(model: nn.Module, x: torch.Tensor):
    """Forward `x` without gradients."""
    with torch.no_grad():
        return model(x)


_CACHE: dict[str, dict] = {}


def built(yaml: str) -> dict:
    """Build (once) the original model, its twin and their reference outputs for `yaml`."""
    if yaml not in _CACHE:
        torch.manual_seed(0)
        orig = DetectionModel(yaml, nc=3, verbose=False)
        randomize_bn(orig)
        orig.eval()
        x = torch.randn(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
        ref = run(orig, x)
        twin = copy.deepcopy(orig)
        count = replace_blocks(twin)
        _CACHE[yaml] = {"orig": orig, "twin": twin, "count": count, "x": x, "ref": ref}
    return _CACHE[yaml]


def n_params(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("yaml", YAMLS)
def test_replace_is_exact(yaml):
    """Replacement swaps every original block and leaves the eval-mode outputs unchanged."""
    b = built(yaml)
    assert b["count"] > 0
    assert not any(isinstance(m, ORIGINALS) for m in b["twin"].modules())
    assert sum(isinstance(m, tuple(TWINS.values())) for m in b["twin"].modules()) == b["count"]
    assert_same_outputs(run(b["twin"], b["x"]), b["ref"])


@pytest.mark.parametrize("yaml", YAMLS)
def test_attributes_and_params(yaml):
    """Parameter count is unchanged and twins carry the Ultralytics graph attributes."""
    b = built(yaml)
    orig, twin = b["orig"], b["twin"]
    assert n_params(twin) == n_params(orig)
    assert twin.save == orig.save and torch.equal(twin.stride, orig.stride)
    for layer_o, layer_t in zip(orig.model, twin.model):
        if type(layer_o) in TWINS:
            assert type(layer_t) is TWINS[type(layer_o)]
            assert (layer_t.f, layer_t.i) == (layer_o.f, layer_o.i)
            assert layer_t.type == f"ultralytics_prune.patches.blocks.{type(layer_t).__name__}"
            assert layer_t.np == n_params(layer_t) == layer_o.np
            assert layer_t.c == layer_o.c
            assert layer_t.training is False
            assert layer_t.cv0.conv.out_channels == layer_t.cv1.conv.out_channels == layer_o.c


@pytest.mark.parametrize("yaml", YAMLS)
def test_idempotent(yaml):
    """A second replacement finds nothing to do."""
    twin = copy.deepcopy(built(yaml)["twin"])
    assert replace_blocks(twin) == 0


@pytest.mark.parametrize("yaml", YAMLS)
def test_fuse(yaml):
    """Ultralytics fuse() folds the twins' BatchNorms and keeps the outputs."""
    b = built(yaml)
    orig_f = copy.deepcopy(b["orig"]).fuse(verbose=False)
    twin_f = copy.deepcopy(b["twin"]).fuse(verbose=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in twin_f.modules())
    out = run(twin_f, b["x"])
    assert_same_outputs(out, run(orig_f, b["x"]))
    assert_same_outputs(flatten(out)[0], flatten(b["ref"])[0], rtol=1e-4)  # fused vs unfused: BN folding rounding


def test_training_mode_matches():
    """In training mode the twins give the same raw outputs and the same BatchNorm running-stat updates."""
    b = built("yolov8n.yaml")
    orig = copy.deepcopy(b["orig"]).train()
    twin = copy.deepcopy(orig)
    assert replace_blocks(twin) == b["count"]
    assert all(m.training for m in twin.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_same_outputs(run(twin, x), run(orig, x))
    o, t = orig.model[2], twin.model[2]
    stats = torch.cat([t.cv0.bn.running_mean, t.cv1.bn.running_mean])
    torch.testing.assert_close(stats, o.cv1.bn.running_mean, rtol=1e-5, atol=1e-6)
    assert t.cv0.bn.num_batches_tracked.item() == o.cv1.bn.num_batches_tracked.item() == 1


def test_replace_after_fuse():
    """Fused originals (conv with bias, no BN) are split exactly too."""
    b = built("yolov8n.yaml")
    fused = copy.deepcopy(b["orig"]).fuse(verbose=False)
    ref = run(fused, b["x"])
    assert replace_blocks(fused) == b["count"]
    assert_same_outputs(run(fused, b["x"]), ref)


@pytest.mark.parametrize("yaml", ("yolov8n.yaml", "yolo26n.yaml"))
def test_onnx_export(yaml, tmp_path):
    """The twin model exports to ONNX and onnxruntime matches torch."""
    b = built(yaml)
    model = copy.deepcopy(b["twin"])
    model.model[-1].export = True  # Detect returns only the decoded predictions, as in Ultralytics exports
    f = tmp_path / "twin.onnx"
    with torch.no_grad():
        expected = model(b["x"])
        torch.onnx.export(model, (b["x"],), str(f), opset_version=17, dynamo=False, input_names=["images"])
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    (actual,) = sess.run(None, {"images": b["x"].numpy()})
    assert_same_outputs(torch.from_numpy(actual), expected, rtol=1e-4)


def test_pickle_roundtrip(tmp_path):
    """The whole twin model survives torch.save / torch.load, in this process and in a fresh one."""
    b = built("yolo11n.yaml")
    f, x_f, out_f = tmp_path / "model.pt", tmp_path / "x.pt", tmp_path / "out.pt"
    torch.save(b["twin"], f)
    torch.save(b["x"], x_f)
    loaded = torch.load(f, weights_only=False)
    assert_same_outputs(run(loaded, b["x"]), b["ref"])

    code = textwrap.dedent(
        f"""
        import torch
        model = torch.load({str(f)!r}, weights_only=False)
        assert type(model.model[2]).__module__ == "ultralytics_prune.patches.blocks"
        with torch.no_grad():
            torch.save(model(torch.load({str(x_f)!r}))[0], {str(out_f)!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent, timeout=120)
    assert_same_outputs(torch.load(out_f), flatten(b["ref"])[0])


def test_from_block_transfer():
    """from_block splits cv1 exactly, moves cv2/m and keeps dtype, requires_grad and training mode."""
    torch.manual_seed(0)
    block = C3k2(16, 32, n=1, attn=True).double()
    randomize_bn(block)
    block.cv1.conv.weight.requires_grad_(False)
    block.cv1.bn.num_batches_tracked.fill_(7)
    block.i, block.f, block.type, block.np = 3, -1, "ultralytics.nn.modules.block.C3k2", n_params(block)
    block.train()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    twin = C3k2_v2.from_block(block)

    assert twin.training and twin.cv0.bn.training
    assert twin.cv2 is block.cv2 and twin.m is block.m
    assert (twin.i, twin.f, twin.type) == (3, -1, "ultralytics_prune.patches.blocks.C3k2_v2")
    assert twin.np == block.np
    w = block.cv1.conv.weight
    for k, conv in enumerate((twin.cv0, twin.cv1)):
        s = slice(k * block.c, (k + 1) * block.c)
        assert conv.conv.weight.dtype == torch.float64 and not conv.conv.weight.requires_grad
        assert conv.bn.weight.requires_grad
        assert torch.equal(conv.conv.weight, w[s])
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(conv.bn, name), getattr(block.cv1.bn, name)[s])
        assert conv.bn.num_batches_tracked.item() == 7
        assert (conv.bn.eps, conv.bn.momentum) == (block.cv1.bn.eps, block.cv1.bn.momentum)
        assert conv.act is block.cv1.act
    # split tensors are new storage, not views into the original
    assert twin.cv0.conv.weight.data_ptr() != w.data_ptr()
    block.eval(), twin.eval()
    assert not twin.training
    with torch.no_grad():
        torch.testing.assert_close(twin(x), block(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("orig", "twin"),
    [
        (C2f(16, 32, 2, True), C2f_v2(16, 32, 2, True)),
        (C3k2(16, 32, 1, c3k=True), C3k2_v2(16, 32, 1, c3k=True)),
        (C3k2(16, 32, 1, attn=True), C3k2_v2(16, 32, 1, attn=True)),
        (C2PSA(64, 64, 1), C2PSA_v2(64, 64, 1)),
    ],
)
def test_constructors_match_originals(orig, twin):
    """Twins built from scratch have the original's layout, with cv1 split in two."""
    assert n_params(twin) == n_params(orig)
    assert twin.c == orig.c
    assert [type(m) for m in twin.m.modules()] == [type(m) for m in orig.m.modules()]
    assert twin(torch.randn(1, twin.cv0.conv.in_channels, 8, 8)).shape[1] == twin.cv2.conv.out_channels


def test_exporter_does_not_see_c2f():
    """Ultralytics' exporter swaps forward for forward_split on C2f instances; twins must not be C2f."""
    assert not any(issubclass(t, C2f) for t in TWINS.values())


def test_dependency_graph_builds():
    """torch-pruning builds a dependency graph through the twins and links the split convs into cv2."""
    model = copy.deepcopy(built("yolov8n.yaml")["twin"])
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 64, 64))
    block = model.model[2]
    group = dg.get_pruning_group(block.cv0.conv, tp.prune_conv_out_channels, idxs=[0, 1])
    targets = {dep.target.module for dep, _ in group}
    assert block.cv0.bn in targets and block.cv2.conv in targets
    assert block.cv1.conv not in targets  # the halves are now independent
