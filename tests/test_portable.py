"""What a run saves loads with plain Ultralytics: a fresh Python where `import ultralytics_prune` fails loads every
checkpoint kind, runs it, validates, predicts and exports it, and gets what the run's model computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics.nn.tasks import DetectionModel, SegmentationModel

from tools.make_dataset import make_synthetic_dataset
from ultralytics_prune.checkpoint import foreign_modules, load_model, save_checkpoint, to_plain
from ultralytics_prune.measure.report import ONNX_TOLERANCE
from ultralytics_prune.model import run_recipe
from ultralytics_prune.patches.blocks import C2f_v2
from ultralytics_prune.patches.plain import restore_blocks
from ultralytics_prune.recipes.loop import PruneRun

FAST = dict(imgsz=64, batch=16, workers=0, plots=False, exist_ok=True, device="cpu", max_map_drop=1.0)

# Run in a fresh interpreter: `ultralytics_prune` (and this repository's `tools`) cannot be imported there, as on a
# machine where only `pip install ultralytics` was run.
PLAIN_SCRIPT = r"""
import json, sys
import importlib.abc

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ultralytics_prune", "tools"}:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NotInstalled())
import numpy as np, onnxruntime as ort, torch
from ultralytics import YOLO

jobs, data, image, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
x = torch.from_numpy(np.load(sys.argv[5]))
results, arrays = {}, {}


def first_tensor(y):
    while isinstance(y, (list, tuple)):
        y = y[0]
    return y.numpy()


for i, (file, full) in enumerate(jobs):
    yolo = YOLO(file)
    model = yolo.model.float().eval()
    with torch.no_grad():
        y = model(x)
    arrays[str(i)] = first_tensor(y)
    result = {"classes": sorted({type(m).__module__ for m in model.modules()})}
    if full:
        metrics = yolo.val(data=data, imgsz=64, batch=16, workers=0, plots=False, device="cpu", verbose=False)
        result["map"] = float(metrics.box.map)
        result["predicted"] = len(yolo.predict(image, imgsz=64, device="cpu", verbose=False, conf=0.0)[0])
        onnx = yolo.export(format="onnx", imgsz=64, device="cpu", verbose=False)
        session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = YOLO(file).model.float().eval().fuse()(x)
        ref = first_tensor(ref)
        onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        result["onnx_diff"] = float(np.abs(onnx_out - ref).max() / max(1.0, np.abs(ref).max()))
    result["plugin_imported"] = any(m.split(".")[0] == "ultralytics_prune" for m in sys.modules)
    results[file] = result
np.savez(out, **arrays)
print("RESULT " + json.dumps(results))
"""


def run_plain(jobs: list[tuple[Path, bool]], data: Path, image: Path, x: np.ndarray, tmp: Path) -> tuple[dict, dict]:
    """Run `PLAIN_SCRIPT` on `jobs` ((checkpoint, validate/predict/export too)); return its results and outputs."""
    np.save(tmp / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, json.dumps([[str(f), full] for f, full in jobs]), str(data), str(image),
         str(tmp / "out.npz"), str(tmp / "x.npy")],
        capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "1"}, cwd=tmp, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-3000:]
    with np.load(tmp / "out.npz") as outputs:
        return json.loads(line[-1][len("RESULT ") :]), {k: outputs[k] for k in outputs.files}


def as_pruned(file: Path, x: np.ndarray) -> np.ndarray:
    """The output of the model in `file` as the pruning loop holds it (block and box-decoder twins swapped in)."""
    model = PruneRun.swap_twins(load_model(file)).eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    while isinstance(y, (list, tuple)):
        y = y[0]
    return y.numpy()


@pytest.fixture(scope="module")
def saved(synthetic_data, tmp_path_factory) -> dict:
    """Every kind of checkpoint a run saves, from small runs on untrained models of each family (and a segment one)."""
    root = tmp_path_factory.mktemp("portable")
    seg_data = make_synthetic_dataset(root / "seg", n_train=16, n_val=4, imgsz=64, nc=3, task="segment")
    inputs = {}
    for name, cls, cfg in (("v8", DetectionModel, "yolov8n.yaml"), ("v11", DetectionModel, "yolo11n.yaml"),
                           ("v26", DetectionModel, "yolo26n.yaml"), ("seg", SegmentationModel, "yolov8n-seg.yaml")):
        inputs[name] = save_checkpoint(cls(cfg, nc=3, verbose=False), root / f"{name}.pt")
    # uniform widths: the scan would only pick other widths, and what is saved is the same kind of file either way
    common = {**FAST, "data": str(synthetic_data), "project": str(root / "runs"), "epochs": 0, "onnx": False,
              "sensitivity": False, "reconstruct": 0}
    runs = {
        # global widths give the two halves of a C2f different widths before they are tied
        "prune": ("prune", {"model": inputs["v8"], "rate": 0.5, "iterative_steps": 1, "epochs": 1,
                            "global_pruning": True, "onnx": True}),
        "slim": ("slim", {"model": inputs["v8"], "rate": 0.5}),
        "unstructured": ("prune", {"model": inputs["v8"], "method": "unstructured", "rate": 0.5}),
        "attention": ("prune", {"model": inputs["v11"], "rate": 0.5, "iterative_steps": 1, "attention": "prune"}),
        "v26": ("prune", {"model": inputs["v26"], "rate": 0.5, "iterative_steps": 1}),
        "seg": ("prune", {"model": inputs["seg"], "rate": 0.5, "iterative_steps": 1, "data": str(seg_data)}),
    }  # fmt: skip
    finals = {name: run_recipe(mode, {**common, "name": name, **keys, "model": str(keys["model"])})
              for name, (mode, keys) in runs.items()}  # fmt: skip
    return {"root": root, "finals": finals, "seg_data": seg_data}


def test_every_checkpoint_runs_in_plain_ultralytics(saved, synthetic_data, tmp_path):
    finals = saved["finals"]
    files = sorted({*finals.values(), *(saved["root"] / "runs").glob("*/step*/weights/*.pt")})
    kinds = {f.name for f in files}
    assert {"pruned.pt", "slimmed.pt", "step.pt", "start.pt", "last.pt", "best.pt"} <= kinds, kinds
    full = {finals["prune"], finals["slim"], finals["attention"], finals["v26"]}
    image = next((Path(synthetic_data).parent / "images" / "val").glob("*"))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    results, outputs = run_plain([(f, f in full) for f in files], synthetic_data, image, x, tmp_path)
    for i, file in enumerate(files):
        result = results[str(file)]
        assert not result["plugin_imported"], file
        assert all(c.startswith(("ultralytics.", "torch.")) for c in result["classes"]), (file, result["classes"])
        ref = as_pruned(file, x)
        assert outputs[str(i)].shape == ref.shape
        assert np.abs(outputs[str(i)] - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), file
        if file in full:
            assert 0 <= result["map"] <= 1 and result["predicted"] > 0, (file, result)
            assert result["onnx_diff"] < ONNX_TOLERANCE, (file, result)  # 1.3e-4 measured on a YOLO26n cut


def test_saved_models_hold_only_ultralytics_classes(saved):
    for name, final in saved["finals"].items():
        ckpt = torch.load(final, map_location="cpu", weights_only=False)
        assert not foreign_modules(ckpt["model"]), name
        assert ckpt["model"].yaml["pruned"], f"{name}: marked pruned, so training keeps its widths"


def test_saved_model_prunes_again_from_plain_blocks(saved, synthetic_data, tmp_path):
    """prune -> save -> load -> prune again: the plain blocks become twins again and lose more channels."""
    first = saved["finals"]["prune"]
    again = run_recipe("prune", {**FAST, "data": str(synthetic_data), "project": str(tmp_path), "name": "again",
                                 "model": str(first), "rate": 0.3, "iterative_steps": 1, "epochs": 0,
                                 "onnx": False})  # fmt: skip
    before = sum(p.numel() for p in load_model(first).parameters())
    after = load_model(again)
    assert sum(p.numel() for p in after.parameters()) < before and not foreign_modules(after)


def test_unequal_halves_are_padded_exactly():
    """A C2f twin whose first half is narrower is saved as a C2f whose padding channels nothing reads."""
    twin = C2f_v2(16, 32, n=1, shortcut=True)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    keep = torch.arange(0, 16, 2)  # the first half keeps 8 of its 16 channels
    twin.cv0.conv.weight = torch.nn.Parameter(twin.cv0.conv.weight[keep].clone())
    twin.cv0.conv.out_channels = 8
    bn = twin.cv0.bn
    bn.weight, bn.bias = torch.nn.Parameter(bn.weight[keep].clone()), torch.nn.Parameter(bn.bias[keep].clone())
    bn.running_mean, bn.running_var, bn.num_features = bn.running_mean[keep], bn.running_var[keep], 8
    cv2 = twin.cv2.conv
    cv2.weight = torch.nn.Parameter(torch.cat([cv2.weight[:, keep], cv2.weight[:, 16:]], 1).clone())
    cv2.in_channels = 8 + 16 + 16
    holder = torch.nn.Sequential(twin).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        reference = holder(x)
        plain = deepcopy(holder)
        assert restore_blocks(plain) == 1 and type(plain[0]).__name__ == "C2f"
        assert plain[0].c == 16 and plain[0].cv1.conv.out_channels == 32
        assert torch.allclose(plain(x), reference, atol=1e-6)
    wider = deepcopy(twin)
    wider.cv1, wider.cv0 = wider.cv0, wider.cv1  # first half wider than the second: not expressible
    with pytest.raises(ValueError, match="needs equal halves"):
        to_plain(torch.nn.Sequential(wider))
