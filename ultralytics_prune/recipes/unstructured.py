"""`yolo prune method=unstructured`: global magnitude pruning of convolution weights (weight sparsity).

The smallest `rate` share of all convolution weights, ranked together across layers, is set to zero (as in the
YOLOv5 pruning tutorial); fine-tuning keeps them at zero (`hold_zero_weights`) and the model is saved dense. The
model computes exactly as many multiply-adds as before: PyTorch, onnxruntime and TensorRT multiply the zeros too, so
no dense runtime gets faster. The run measures and says so; a speed-up needs sparse kernels (2:4 sparsity on recent
NVIDIA GPUs, a sparse CPU runtime) or structured pruning (the default `method=structured`), which removes channels.
"""

from __future__ import annotations

from functools import cached_property

import torch.nn as nn
from ultralytics.utils import LOGGER

from ultralytics_prune.channels.widths import step_ratios
from ultralytics_prune.checkpoint import mark_pruned
from ultralytics_prune.measure.latency_target import LatencyProbe
from ultralytics_prune.recipes.loop import PruneRun
from ultralytics_prune.recipes.weight_sparsity import prune_smallest_weights, zero_share


class UnstructuredPruner(PruneRun):
    """`yolo prune method=unstructured`: weight sparsity up to `rate` in `iterative_steps`, fine-tuned with the zeros
    held, saved dense. The CSV gains `sparsity` (share of convolution weights at zero) and `dense_speedup` (timed on
    `latency_backend` in turns with the unpruned model).

    Only `remove` (what a step removes), `measure` and `finish` differ from the structured recipe."""

    method = "unstructured"

    @property
    def n_steps(self) -> int:
        """`iterative_steps`."""
        return self.args.iterative_steps

    @cached_property
    def latency_probe(self) -> LatencyProbe:
        """Times models in turns with the input model on `latency_backend` (made when step 1 is measured)."""
        return LatencyProbe(self.input_model(), self.args.imgsz, self.args.latency_backend)

    def remove(self, step: int) -> dict:
        """Zero the smallest weights up to this step's cumulative share."""
        ratio = step_ratios(self.args.rate, self.n_steps)[step]
        removed = prune_smallest_weights(self.model, ratio)
        mark_pruned(self.model, self.method, rate=self.args.rate)  # the fine-tune trainer holds the zeros of it
        return {"ratio": ratio, "removed": removed}

    def measure(self, model: nn.Module) -> dict:
        """The usual columns, the share of zero weights and the speed-up a dense runtime realises from them: `model`
        timed on `latency_backend` in turns with the unpruned model (1 for the unpruned model itself)."""
        row = super().measure(model)
        speedup = 1.0
        if self.rows:
            model_ms, reference_ms = self.latency_probe.measure(model)
            speedup = reference_ms / model_ms
        return {**row, "sparsity": zero_share(model), "dense_speedup": speedup}

    def finish(self):
        """Save, export and check as every run, then say what the sparsity bought and what would make it faster."""
        final = super().finish()
        first, last = self.rows[0], self.rows[-1]
        LOGGER.warning(
            f"{self.prefix}method=unstructured: {last['sparsity']:.1%} of the convolution weights are zero, but the "
            f"model still computes {last['macs_G']:.3f} GMACs ({first['macs_G']:.3f} before) with "
            f"{last['params_M']:.3f}M parameters, and runs at x{last['dense_speedup']:.2f} the speed of the unpruned "
            f"model on {self.args.latency_backend} (measured in turns with it). Dense runtimes (PyTorch, onnxruntime, "
            f"TensorRT) multiply the zeros too; a speed-up needs sparse kernels (2:4 sparsity on recent NVIDIA GPUs, "
            f"a sparse CPU runtime) or structured pruning (method=structured, the default), which removes channels"
        )
        return final
