"""Where a model's time goes on a backend, layer by layer and width by width, and what one channel of each prunable
group costs there.

`LatencyTable.measure` times every convolution (with its BatchNorm and activation) of a model and of its uniform
cuts (`SWEEP`: every layer at 75, 50 and 25 % of its channels) on `latency_backend`, all in interleaved turns:
onnxruntime profiles each model exported as a user would (its own per-node times; node names carry the PyTorch module
scope, conv weights keep their module names), `torch`/`cuda` time each layer's forward with hooks. What no layer
owns (box decoding, concatenations, layout reorders) is the fixed part, which no pruning shrinks.

A layer's time does not fall in proportion to its weights. YOLOv8n at 160 px on onnxruntime CPU (one table, the four
widths interleaved): cut uniformly to half its channels (a quarter of the weights) it still spends 1.56 ms in its
convolutions against 3.83 ms at full width, where scaling by weights predicts 0.97 ms; at a quarter of its channels
1.06 ms against 0.25 ms. The median layer keeps 40 % of its time at half its width; the stem and the first block
(model.0, model.2) keep 60-86 % at a quarter.
So each layer's time is read off its measured curve (weights -> ms, made monotone, interpolated), and
`channel_costs` charges a channel what removing it saves there: the drop of that curve by one channel's weights, in
every layer its group cuts (output channels of some, input channels of others). Ranking channels by importance per
millisecond then removes first what is cheap to lose and saves time when it goes (`latency_aware=True`).

The table depends only on the architecture, the image size, the backend and the machine, never on weight values, so
it is kept in `CACHE_DIR` under a key of those and read back by later runs (see `cache_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from ultralytics.nn.modules.conv import Conv
from ultralytics.utils import LOGGER, USER_CONFIG_DIR

from ultralytics_prune.channels.graph import is_out_channels
from ultralytics_prune.files import read_csv, write_csv
from ultralytics_prune.measure.latency import fused_copy, time_interleaved
from ultralytics_prune.measure.latency_target import exported

SWEEP = (1.0, 0.75, 0.5, 0.25)  # shares of every layer's channels the table is measured at (uniform cuts)
CACHE_DIR = USER_CONFIG_DIR / "ultralytics-prune" / "latency_tables"


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


def onnx_layer_times(
    onnx_files: Sequence[str | Path], imgsz: int, runs: int = 15
) -> list[tuple[dict[str, float], float]]:
    """Median ms per convolution (by PyTorch module name) and of the whole run for each file, from onnxruntime's own
    profile, the sessions taking turns (`latency.time_interleaved`)."""
    import onnx
    import onnxruntime as ort

    warmup = 3
    with tempfile.TemporaryDirectory(prefix="ultralytics-prune-profile-") as tmp:
        sessions, scopes = [], []
        for i, file in enumerate(onnx_files):
            scope = {}  # module scope in node names, e.g. '/model.2/cv0/' -> 'model.2.cv0.conv'
            for node in onnx.load(str(file)).graph.node:
                if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(".weight"):
                    prefix = node.name[: node.name.rfind("/") + 1]
                    key = prefix[: -len("conv/")] if prefix.endswith("/conv/") else prefix
                    scope[key] = node.input[1][: -len(".weight")]
            options = ort.SessionOptions()
            options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / f"profile{i}")
            sessions.append(ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"]))
            scopes.append(scope)
        feeds = [{s.get_inputs()[0].name: np.zeros((1, 3, imgsz, imgsz), dtype=np.float32)} for s in sessions]
        time_interleaved([partial(s.run, None, f) for s, f in zip(sessions, feeds)], rounds=runs, warmup=warmup)
        profiles = [json.loads(Path(s.end_profiling()).read_text()) for s in sessions]
    return [profiled_times(events, scope, warmup) for events, scope in zip(profiles, scopes)]


def profiled_times(events: list[dict], scopes: dict[str, str], warmup: int) -> tuple[dict[str, float], float]:
    """Median ms per convolution and of the whole run from one onnxruntime profile, past its first `warmup` runs."""
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


def torch_layer_times(
    models: Sequence[nn.Module], imgsz: int, device: str, runs: int = 15
) -> list[tuple[dict[str, float], float]]:
    """Median ms per convolution (by module name) and of the whole forward for each model, timed with hooks on fused
    copies taking turns (`latency.time_interleaved`)."""
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    x, warmup, probes, spent, handles = torch.zeros(1, 3, imgsz, imgsz, device=device), 3, [], [], []

    def timer(started: dict, times: dict, name: str):
        def before(module, args):
            sync()
            started[name] = time.perf_counter()

        def after(module, args, out):
            sync()
            times[name].append((time.perf_counter() - started[name]) * 1000)

        return before, after

    for model in models:
        probe = fused_copy(model, device)
        started, times = {}, defaultdict(list)
        for name, owner in conv_owners(probe).items():
            before, after = timer(started, times, name)
            handles += [owner.register_forward_pre_hook(before), owner.register_forward_hook(after)]
        probes.append(probe)
        spent.append(times)

    def forward(probe: nn.Module):
        with torch.inference_mode():
            probe(x)
        sync()

    try:
        totals = time_interleaved([partial(forward, p) for p in probes], rounds=runs, warmup=warmup)
    finally:
        for h in handles:
            h.remove()
    return [({n: float(np.median(t[warmup:])) for n, t in times.items()}, float(np.median(total)))
            for times, total in zip(spent, totals)]  # fmt: skip


def monotone(values: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (pool adjacent violators): a layer measured slower at
    fewer weights than at more is noise, and the two readings are averaged."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def machine_signature(backend: str) -> dict:
    """What a latency table depends on besides the model: the processor, its threads and the runtime's versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    signature = {"cpu": cpu, "threads": os.cpu_count(), "torch": torch.__version__}
    if backend in ("onnxruntime", "tensorrt"):
        import onnxruntime as ort

        signature["onnxruntime"] = ort.__version__
    if backend in ("cuda", "tensorrt"):
        signature["gpu"] = torch.cuda.get_device_name(0)
    return signature


def cache_file(model: nn.Module, imgsz: int, backend: str, round_to: int) -> Path:
    """Where the table of `model`'s architecture (every convolution's name and weight shape) at `imgsz` on `backend`
    and this machine is kept between runs; `round_to` is part of the key, since the sweep's cuts are rounded by it."""
    convs = [[n, list(m.weight.shape)] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    key = {"sweep": SWEEP, "imgsz": imgsz, "backend": backend, "machine": machine_signature(backend), "convs": convs,
           "round_to": round_to}  # fmt: skip
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE_DIR / f"{backend}-{imgsz}-{digest}.csv"


def read_cached(file: Path) -> LatencyTable | None:
    """The table cached in `file`; None when there is none, or when it cannot be read (a warning says so, and the
    caller measures it again)."""
    if not file.exists():
        return None
    try:
        return LatencyTable.load(file)
    except (OSError, ValueError, KeyError, StopIteration) as e:
        LOGGER.warning(f"cached latency table {file} unreadable ({type(e).__name__}: {e}): measuring it again")
        return None


def write_cached(table: LatencyTable, file: Path) -> None:
    """Cache `table` in `file` for later runs; a folder that cannot be written costs only that (a warning says so)."""
    try:
        table.save(file)
    except OSError as e:
        LOGGER.warning(f"latency table not cached ({e}): later runs will measure it again")


class LatencyTable:
    """Milliseconds of every convolution of a model (with its activation) on one backend, at each weight count it was
    measured at (its full width and the uniform cuts of `SWEEP`), and of the whole unpruned model.

    Args:
        layers (dict[str, list[tuple[int, float]]]): Module name of each convolution -> (weight count, ms) points;
            the ms are made non-decreasing in weights (`monotone`).
        total_ms (float): The whole unpruned model's time in the same runs.
    """

    columns = ("layer", "weights", "ms", "share")

    def __init__(self, layers: dict[str, list[tuple[int, float]]], total_ms: float):
        """Hold the measured points, sorted by weight count; points at one weight count (a layer too narrow for a
        cut to reach, e.g. the stem at `round_to`) are averaged."""
        self.layers = {}
        for name, points in layers.items():
            at = defaultdict(list)
            for weights, ms in points:
                at[int(weights)].append(ms)
            weights = sorted(at)
            self.layers[name] = list(zip(weights, monotone([float(np.mean(at[w])) for w in weights])))
        self.total_ms = total_ms

    @classmethod
    def measure(cls, models: Sequence[nn.Module], imgsz: int, backend: str) -> LatencyTable:
        """Time every convolution of each of `models` (the unpruned model first, then cuts of it: same layer names,
        fewer channels) on `backend` (`onnxruntime`, `torch` or `cuda`) at `imgsz`, in interleaved turns."""
        if backend == "onnxruntime":
            with contextlib.ExitStack() as stack:
                files = [stack.enter_context(exported(m, imgsz)) for m in models]
                measured = onnx_layer_times(files, imgsz)
        else:
            measured = torch_layer_times(models, imgsz, "cuda" if backend == "cuda" else "cpu")
        layers = defaultdict(list)
        for model, (times, _) in zip(models, measured):
            convs = dict(model.named_modules())
            for name, ms in times.items():
                if name in convs:
                    layers[name].append((convs[name].weight.numel(), ms))
        return cls(dict(layers), measured[0][1])

    def full_ms(self, name: str) -> float:
        """Layer `name`'s time at its full (unpruned) width."""
        return self.layers[name][-1][1]

    @property
    def fixed_ms(self) -> float:
        """Time no convolution owns (decoding, concatenations, reorders): what pruning cannot shrink."""
        return max(0.0, self.total_ms - sum(self.full_ms(n) for n in self.layers))

    def layer_ms(self, name: str, weights: int) -> float:
        """Layer `name`'s time at `weights` weights: interpolated between measured points, extended along the
        nearest segment outside them (never below 0); one point alone scales by weights."""
        points = self.layers.get(name)
        if not points:
            return 0.0
        if len(points) == 1:
            return points[0][1] * weights / max(1, points[0][0])
        w, ms = np.array(points, dtype=float).T
        if w[0] <= weights <= w[-1]:
            return float(np.interp(weights, w, ms))
        i = 0 if weights < w[0] else len(w) - 2
        slope = (ms[i + 1] - ms[i]) / max(1.0, w[i + 1] - w[i])
        return max(0.0, float(ms[i] + slope * (weights - w[i])))

    def channel_ms(self, name: str, conv: nn.Conv2d, width: int) -> float:
        """What removing one of `width` channels (on one side) of convolution `name` saves at its current weights."""
        weights = conv.weight.numel()
        return self.layer_ms(name, weights) - self.layer_ms(name, weights - weights / max(1, width))

    def rows(self) -> list[dict]:
        """The table as rows (`columns`): every layer's points, widest first, slowest layer first; then one row for
        the fixed part and one for the total."""
        rows = []
        for name in sorted(self.layers, key=lambda n: -self.full_ms(n)):
            rows += [{"layer": name, "weights": w, "ms": ms, "share": ms / self.total_ms}
                     for w, ms in reversed(self.layers[name])]  # fmt: skip
        return rows + [{"layer": "(fixed)", "weights": 0, "ms": self.fixed_ms, "share": self.fixed_ms / self.total_ms},
                       {"layer": "(total)", "weights": 0, "ms": self.total_ms, "share": 1.0}]  # fmt: skip

    def save(self, file: str | Path) -> Path:
        """Write `rows` as CSV (folders made as needed)."""
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        return write_csv(self.rows(), file)

    @classmethod
    def load(cls, file: str | Path) -> LatencyTable:
        """Read a table written by `save`."""
        rows = read_csv(file)
        total = next(r["ms"] for r in rows if r["layer"] == "(total)")
        layers = defaultdict(list)
        for r in rows:
            if not r["layer"].startswith("("):
                layers[r["layer"]].append((int(r["weights"]), r["ms"]))
        return cls(dict(layers), total)


def channel_costs(table: LatencyTable, model: nn.Module, graph: tp.DependencyGraph, groups: list) -> list[float]:
    """Milliseconds one channel of each group saves now: in every convolution the group prunes, what one channel
    fewer on the side the group cuts (output or input channels) takes off that layer's time."""
    names = {m: n for n, m in model.named_modules()}
    costs = []
    for group in groups:
        cost = 0.0
        for item in group:
            conv = item.dep.target.module
            if isinstance(conv, nn.Conv2d) and names.get(conv) in table.layers:
                width = conv.out_channels if is_out_channels(graph, item) else conv.in_channels
                cost += table.channel_ms(names[conv], conv, width)
        costs.append(cost)
    return costs
