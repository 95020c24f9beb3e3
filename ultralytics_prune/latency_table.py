"""Where a model's time goes on a backend, layer by layer, and what one channel of each prunable group costs there.

`LatencyTable.measure` times every convolution (with its BatchNorm and activation) of a model on `latency_backend`:
onnxruntime profiles the model exported as a user would (its own per-node times; node names carry the PyTorch module
scope, conv weights keep their module names), `torch`/`cuda` time each layer's forward with hooks. What no layer
owns (box decoding, concatenations, layout reorders) is the fixed part, which no pruning shrinks.

`channel_costs` turns that table into milliseconds per channel of each prunable group: a group's channel is an
output channel of some layers and an input channel of others, and each layer's share is its time divided by its
width along that side. A layer's time is taken to scale with its weight count (its MACs at a fixed image size), as
convolutions measured on onnxruntime CPU do (x3.92 less conv time for x3.95 fewer MACs, README Results); the table
itself is measured once, on the unpruned model. Ranking channels by importance per millisecond then removes first
what is cheap to lose and slow to run (`latency_aware=True`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.nn.modules.conv import Conv

from ultralytics_prune.graph import is_out_channels
from ultralytics_prune.latency_target import exported
from ultralytics_prune.report import read_csv, write_csv


def conv_owners(model: nn.Module) -> dict[str, nn.Module]:
    """Every convolution of `model` by module name, mapped to the module timed for it: the Ultralytics `Conv` around it
    (with its activation), or the convolution itself when it stands alone (a head's last layer)."""
    owners = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv) and isinstance(getattr(module, "conv", None), nn.Conv2d):
            owners[f"{name}.conv"] = module
    wrapped = {id(owner.conv) for owner in owners.values()}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and id(module) not in wrapped:
            owners[name] = module
    return owners


def onnx_layer_times(onnx_file: str | Path, imgsz: int, runs: int = 10) -> tuple[dict[str, float], float]:
    """Median ms per convolution (by PyTorch module name) and of the whole run, from onnxruntime's own profile."""
    import onnx
    import onnxruntime as ort

    scopes = {}  # module scope in node names, e.g. '/model.2/cv0/' -> 'model.2.cv0.conv'
    for node in onnx.load(str(onnx_file)).graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(".weight"):
            scope = node.name[: node.name.rfind("/") + 1]
            scopes[scope[: -len("conv/")] if scope.endswith("/conv/") else scope] = node.input[1][: -len(".weight")]
    with tempfile.TemporaryDirectory(prefix="ultralytics-prune-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.zeros((1, 3, imgsz, imgsz), dtype=np.float32)}
        warmup = 3
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node, totals = defaultdict(list), []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1000)
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            totals.append(e["dur"] / 1000)
    times = defaultdict(float)
    ordered = sorted(scopes, key=len, reverse=True)  # the innermost scope owns a node
    for node, durations in per_node.items():
        owner = next((s for s in ordered if node.startswith(s)), None)
        if owner:
            times[scopes[owner]] += float(np.median(durations[warmup:] or durations))
    return dict(times), float(np.median(totals[warmup:] or totals))


def torch_layer_times(model: nn.Module, imgsz: int, device: str, runs: int = 10) -> tuple[dict[str, float], float]:
    """Median ms per convolution (by module name) and of the whole forward, timed with hooks on a fused copy."""
    probe = deepcopy(model).float().to(device).eval()
    probe = probe.fuse() if hasattr(probe, "fuse") else probe
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    spent, started = defaultdict(list), {}

    def before(name: str):
        def hook(module, args):
            sync()
            started[name] = time.perf_counter()

        return hook

    def after(name: str):
        def hook(module, args, out):
            sync()
            spent[name].append((time.perf_counter() - started[name]) * 1000)

        return hook

    handles = []
    for name, owner in conv_owners(probe).items():
        handles += [owner.register_forward_pre_hook(before(name)), owner.register_forward_hook(after(name))]
    x, totals, warmup = torch.zeros(1, 3, imgsz, imgsz, device=device), [], 3
    try:
        with torch.inference_mode():
            for _ in range(warmup + runs):
                sync()
                t = time.perf_counter()
                probe(x)
                sync()
                totals.append((time.perf_counter() - t) * 1000)
    finally:
        for h in handles:
            h.remove()
    return {n: float(np.median(t[warmup:])) for n, t in spent.items()}, float(np.median(totals[warmup:]))


class LatencyTable:
    """Milliseconds of every convolution of a model (with its activation) on one backend, at the widths it had when
    measured, and of the whole model.

    Args:
        layers (dict[str, tuple[float, int]]): Module name of each convolution -> (ms, weight count when measured).
        total_ms (float): The whole model's time in the same runs.
    """

    columns = ("layer", "ms", "weights", "share")

    def __init__(self, layers: dict[str, tuple[float, int]], total_ms: float):
        """Hold the measured times."""
        self.layers, self.total_ms = layers, total_ms

    @classmethod
    def measure(cls, model: nn.Module, imgsz: int, backend: str) -> LatencyTable:
        """Time every convolution of `model` on `backend` (`onnxruntime`, `torch` or `cuda`) at `imgsz`."""
        if backend == "onnxruntime":
            with exported(model, imgsz) as file:
                times, total = onnx_layer_times(file, imgsz)
        else:
            times, total = torch_layer_times(model, imgsz, "cuda" if backend == "cuda" else "cpu")
        convs = dict(model.named_modules())
        return cls({n: (ms, convs[n].weight.numel()) for n, ms in times.items() if n in convs}, total)

    @property
    def fixed_ms(self) -> float:
        """Time no convolution owns (decoding, concatenations, reorders): what pruning cannot shrink."""
        return max(0.0, self.total_ms - sum(ms for ms, _ in self.layers.values()))

    def layer_ms(self, name: str, conv: nn.Conv2d) -> float:
        """The time of convolution `name` at its current widths: its measured time scaled by its weight count."""
        ms, weights = self.layers.get(name, (0.0, 1))
        return ms * conv.weight.numel() / max(1, weights)

    def rows(self) -> list[dict]:
        """The table as rows (`columns`), slowest layer first, then one for the fixed part and one for the total."""
        rows = [{"layer": n, "ms": ms, "weights": w, "share": ms / self.total_ms}
                for n, (ms, w) in sorted(self.layers.items(), key=lambda kv: -kv[1][0])]  # fmt: skip
        return rows + [{"layer": "(fixed)", "ms": self.fixed_ms, "weights": 0, "share": self.fixed_ms / self.total_ms},
                       {"layer": "(total)", "ms": self.total_ms, "weights": 0, "share": 1.0}]  # fmt: skip

    def save(self, file: str | Path) -> Path:
        """Write `rows` as CSV."""
        return write_csv(self.rows(), file)

    @classmethod
    def load(cls, file: str | Path) -> LatencyTable:
        """Read a table written by `save`."""
        rows = read_csv(file)
        total = next(r["ms"] for r in rows if r["layer"] == "(total)")
        return cls({r["layer"]: (r["ms"], int(r["weights"])) for r in rows if not r["layer"].startswith("(")}, total)


def channel_costs(table: LatencyTable, model: nn.Module, graph: tp.DependencyGraph, groups: list) -> list[float]:
    """Milliseconds one channel of each group costs now: for every convolution the group prunes, its current time
    divided by its current width on the side the group cuts (output or input channels)."""
    names = {m: n for n, m in model.named_modules()}
    costs = []
    for group in groups:
        cost = 0.0
        for item in group:
            conv = item.dep.target.module
            if isinstance(conv, nn.Conv2d) and names.get(conv) in table.layers:
                width = conv.out_channels if is_out_channels(graph, item) else conv.in_channels
                cost += table.layer_ms(names[conv], conv) / max(1, width)
        costs.append(cost)
    return costs
