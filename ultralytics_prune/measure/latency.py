"""Measured latency: models run one image at a time on a backend, reported as medians (and extremes): in turns in one
process (`time_interleaved`, for PyTorch models and latency goals), or each alone in its own process (`time_alone`,
ONNX files: what tools/bench_latency.py and tools/benchmark.py use).

Interleaving makes a slow spell of the machine hit all models alike, so their ratios hold even on a busy machine;
medians ignore the odd outlier. Models take turns in short blocks; each block starts after a short pause and one
untimed call. After a run, onnxruntime's worker threads spin for a while, and on a 2-core machine a model timed right
after another one lost part of its second core to them: call by call alternation measured yolov8s pruned to x3.95
fewer MACs at x2.3 on two threads, one model at a time x3.5. With small models an untimed call was not enough: four
exports of one YOLOv8n at 160 px measured 5.8 to 11.3 ms in turns without the pause, 3.6 to 4.2 ms with it, as each
alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

TURN_PAUSE_S = 0.1  # pause before each block of calls in `time_interleaved` (the previous runner's threads settle)
ALONE_PAUSE_S = 1.0  # pause before each model's process in `time_alone`


def time_interleaved(
    runners: Sequence[Callable[[], object]], rounds: int = 50, warmup: int = 5, block: int = 5,
    settle: float | None = None,
) -> list[list[float]]:
    """Milliseconds of `rounds` calls of each runner, after `warmup` untimed ones, taken in interleaved blocks.

    The runners take turns, `block` timed calls each, every turn opened by a pause of `settle` seconds (when there is
    more than one runner; `TURN_PAUSE_S` when not given) and one untimed call (see the module doc).
    """
    settle = TURN_PAUSE_S if settle is None else settle
    times: list[list[float]] = [[] for _ in runners]
    for run in runners:
        for _ in range(warmup):
            run()
    while any(len(spent) < rounds for spent in times):
        for run, spent in zip(runners, times):
            n = min(block, rounds - len(spent))
            if n <= 0:
                continue
            if len(runners) > 1:
                time.sleep(settle)  # the previous runner's worker threads stop spinning
            run()  # untimed
            for _ in range(n):
                t = time.perf_counter()
                run()
                spent.append((time.perf_counter() - t) * 1000)
    return times


def fused_copy(model: nn.Module, device: str = "cpu") -> nn.Module:
    """An FP32 eval copy of `model` on `device`, BatchNorms folded as Ultralytics does before every prediction."""
    probe = deepcopy(model).float().to(device).eval()
    return probe.fuse() if hasattr(probe, "fuse") else probe


def torch_runner(model: nn.Module, imgsz: int, device: str = "cpu") -> Callable[[], object]:
    """A call that runs a fused FP32 copy of `model` on one zero image (eval, inference mode) on `device`."""
    probe = fused_copy(model, device)
    x = torch.zeros(1, 3, imgsz, imgsz, device=device)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def run():
        with torch.inference_mode():
            out = probe(x)
        sync()
        return out

    return run


ONNX_PROVIDERS = {
    "cpu": ("CPUExecutionProvider", {}),
    "cuda": ("CUDAExecutionProvider", {}),
    "tensorrt": ("TensorrtExecutionProvider", {"trt_fp16_enable": True}),  # FP16, as TensorRT is deployed
}


def onnx_runner(file: str | Path, imgsz: int, threads: int = 0, device: str = "cpu"):
    """A call that runs an ONNX model in onnxruntime on one zero image; `threads` 0 = onnxruntime's default.

    `device` picks the execution provider (`ONNX_PROVIDERS`). onnxruntime quietly falls back to the CPU when a GPU
    provider cannot start (missing CUDA, cuDNN or TensorRT libraries), which would time the CPU under a GPU's name,
    so that raises here.

    Raises:
        RuntimeError: If the session does not run on the provider asked for.
    """
    import onnxruntime as ort

    provider, provider_options = ONNX_PROVIDERS[device]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(file), options, providers=[(provider, provider_options)])
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime could not start {provider} (it fell back to {session.get_providers()[0]}): "
                           f"check that the GPU libraries it needs are installed, see onnxruntime's log above")
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, imgsz, imgsz), dtype=np.float32)}
    return lambda: session.run(None, feed)


def time_alone(
    files: Sequence[str | Path], imgsz: int, threads: int = 0, device: str = "cpu", rounds: int = 50, warmup: int = 5,
    settle: float | None = None,
) -> list[list[float]]:
    """Milliseconds of `rounds` calls of each ONNX model, each model in a process of its own (`onnx_timer.py`).

    The models run one after the other, in the order given, with a pause of `settle` seconds (`ALONE_PAUSE_S` when not
    given) before each, so none shares threads, caches or allocator with another. On this project's 2-core machine
    that is how latency agreed with onnxruntime's own profile: yolov8s pruned to x3.94 fewer MACs timed x3.84 alone,
    x2.3 in one process.

    Raises:
        RuntimeError: If onnxruntime cannot start the provider asked for, or the timer fails.
    """
    provider, provider_options = ONNX_PROVIDERS[device]
    timer = Path(__file__).with_name("onnx_timer.py")
    settle = ALONE_PAUSE_S if settle is None else settle
    times = []
    for file in files:
        time.sleep(settle)
        cmd = [sys.executable, str(timer), str(file), str(imgsz), str(threads), provider, json.dumps(provider_options),
               str(rounds), str(warmup)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr.strip()[-2000:]}
        if "error" in result:
            raise RuntimeError(f"timing {file} failed: {result['error']}")
        times.append(result["ms"])
    return times


def onnx_latencies(
    files: list[str | Path], imgsz: int, rounds: int = 50, warmup: int = 5, threads: int = 0, repeats: int = 1
) -> list:
    """Median onnxruntime CPU latency (ms, batch 1) of each ONNX file, each timed alone in its own process.

    With `repeats`, all files are timed that many times, in reversed order every other time, and each file's median
    is taken over all its calls: one pass per file fell into a slow spell of this shared machine often enough to
    report a model pruned to half the MACs as slower than its parent (x0.95, where 6 alternated repeats gave x1.74).
    """
    calls: list[list[float]] = [[] for _ in files]
    for repeat in range(repeats):
        order = list(range(len(files)))[:: -1 if repeat % 2 else 1]
        for i, times in zip(order, time_alone([files[i] for i in order], imgsz, threads, rounds=rounds, warmup=warmup)):
            calls[i].extend(times)
    return [float(np.median(t)) for t in calls]
