"""`reconstruct=N`: after a cut, rebuild every layer whose input lost channels so that its output matches the model's
before the cut, by linear least squares on N training images (the reconstruction step of He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks", and of ThiNet).

A cut removes output channels of some convolutions and so input channels of the layers that read them (their
consumers). What the removed inputs contributed to a consumer's output is lost, but the inputs that remain are
correlated with them and can take part of it over. For each consumer, with X the patches of its input in the cut
model and Y its output in the model before the cut (the channels it keeps, before BatchNorm), the new weights are

    W = argmin ||Y - X W||^2 + ridge * mean(diag(X^T X)) * ||W||^2,

solved from the normal equations accumulated over the images (a bias, where the layer has one, is solved with it).
The consumers are rebuilt one after the other in the order the model runs them, each from the inputs the cut model
gives once the ones before it are rebuilt, so a consumer also corrects what is left of the changes before it; both
models keep the BatchNorm statistics they were trained with, so a rebuilt layer gives the outputs its BatchNorm was
estimated on (re-estimating the cut model's statistics first would count their change as the cut's; the loop
re-estimates them after, `recalibrate`). `ChannelLedger` records, as the dependency graph removes them, which of the
layer's original output and input channels each convolution keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.utils import TQDM

from ultralytics_prune.channels.calibrate import images_within_budget

REBUILD_IMAGES = 256  # `reconstruct=-1`: at most this many training images ...
MIN_REBUILD_IMAGES = 16  # ... and never fewer, whatever the budget
RIDGE = 1e-3  # Tikhonov term, a share of the mean diagonal of X^T X: keeps the solve stable where inputs are collinear
ROWS_PER_BATCH = 8192  # output positions sampled per layer and batch: bounds the cost of X^T X at large image sizes


def rebuild_images(macs_per_image: float, layers: int, device_type: str) -> int:
    """How many training images `reconstruct=-1` rebuilds on: `REBUILD_IMAGES` where the budget of forward MACs of the
    device allows (YOLOv8n at 128 px on a CPU), fewer for large models and images (YOLOv8n at 640 px: about 40), never
    under `MIN_REBUILD_IMAGES`, within the budget of forward MACs of `calibrate.FORWARD_MACS`."""
    # about one forward pass per image and rebuilt layer: two models, each stopped at the layer, on average halfway
    return images_within_budget(layers * macs_per_image, device_type, REBUILD_IMAGES, MIN_REBUILD_IMAGES)


class ChannelLedger:
    """Which original output and input channels every (non-grouped) convolution keeps across the removals of a step.

    `watch` is called before anything is removed and keeps a copy of the model as it is then (`reference`: after any
    sparse epochs, so the outputs to rebuild are those of the model the removed channels no longer mattered to);
    `record` with each layer slice the dependency graph is about to remove, its indices counted in the layer as it is
    at that moment; `kept` then maps each touched convolution to the original indices it keeps.
    """

    def __init__(self):
        """An empty ledger: nothing removed yet."""
        self.kept: dict[nn.Conv2d, list[torch.Tensor]] = {}
        self.reference: nn.Module | None = None

    def watch(self, model: nn.Module) -> None:
        """Keep a copy of `model` before the step's first removal (later removals of the same step add to it)."""
        if self.reference is None:
            self.reference = deepcopy(model)

    def record(self, layer: nn.Module, produces: bool, idxs: list[int]) -> None:
        """Note that the slice `idxs` of `layer` (its output channels when `produces`, else its input channels) goes."""
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
            return
        kept = self.kept.setdefault(layer, [torch.arange(layer.out_channels), torch.arange(layer.in_channels)])
        dim = 0 if produces else 1
        stay = torch.ones(len(kept[dim]), dtype=torch.bool)
        stay[torch.as_tensor(list(idxs), dtype=torch.long)] = False
        kept[dim] = kept[dim][stay]


class _NormalEquations:
    """X^T X, X^T Y and |Y|^2 of one consumer, accumulated batch by batch."""

    def __init__(self, layer: nn.Conv2d, keep_out: torch.Tensor):
        self.layer, self.keep_out = layer, keep_out
        d = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + (layer.bias is not None)
        device = layer.weight.device
        self.xtx = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.xty = torch.zeros(d, len(keep_out), dtype=torch.float64, device=device)
        self.yty = 0.0
        self.target: torch.Tensor | None = None  # the reference layer's output for the current batch

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as rows of patches (one per output position), a ones column where it has a bias."""
        layer = self.layer
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, d, L)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        if layer.bias is not None:
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], 1)
        return rows

    def add(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Accumulate one batch: `x` the layer's input in the cut model, `self.target` its output before the cut."""
        rows = self.patches(x)
        y = self.target.permute(0, 2, 3, 1).reshape(-1, self.target.shape[1])
        if len(rows) > ROWS_PER_BATCH:
            pick = torch.randperm(len(rows), generator=generator)[:ROWS_PER_BATCH].to(rows.device)
            rows, y = rows[pick], y[pick]
        rows, y = rows.float(), y.float()  # products of one batch in float32, sums over batches in float64
        self.xtx += (rows.T @ rows).double()
        self.xty += (rows.T @ y).double()
        self.yty += float((y.double() ** 2).sum())
        self.target = None

    def error(self, w: torch.Tensor) -> float:
        """|Y - X w|^2 over everything accumulated, as a share of |Y|^2."""
        sse = self.yty - 2 * float((w * self.xty).sum()) + float((w * (self.xtx @ w)).sum())
        return max(sse, 0.0) / max(self.yty, 1e-12)

    def current(self) -> torch.Tensor:
        """The layer's weights (and bias) as the (d, out) matrix of the equations."""
        layer = self.layer
        w = layer.weight.detach().reshape(layer.out_channels, -1)
        if layer.bias is not None:
            w = torch.cat([w, layer.bias.detach()[:, None]], 1)
        return w.T.double()

    def solve(self, ridge: float) -> tuple[float, float]:
        """Set the layer's weights to the least-squares solution; its relative output error before and after."""
        if self.yty == 0:  # never ran on the images (e.g. a branch only training uses): nothing to fit
            return float("nan"), float("nan")
        before = self.error(self.current())
        d = len(self.xtx)
        damp = ridge * float(self.xtx.diagonal().mean()) + 1e-12
        w = torch.linalg.solve(self.xtx + damp * torch.eye(d, dtype=self.xtx.dtype, device=self.xtx.device), self.xty)
        after = self.error(w)
        if after >= before:  # nothing to gain (e.g. a layer the cut barely touched): leave it as it is
            return before, before
        layer = self.layer
        n_weight = layer.weight[0].numel()
        layer.weight.data.copy_(w[:n_weight].T.reshape_as(layer.weight).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.data.copy_(w[n_weight].to(layer.bias.dtype))
        return before, after


def consumers(
    reference: nn.Module, model: nn.Module, ledger: ChannelLedger
) -> dict[str, tuple[nn.Conv2d, torch.Tensor]]:
    """The convolutions of `model` whose input lost channels, by name, with the original output channels they keep.

    Layers cut outside the ledger (attention heads, see `attention`) do not match its counts and are left alone."""
    names = {m: n for n, m in model.named_modules()}
    before = dict(reference.named_modules())
    found = {}
    for layer, (keep_out, keep_in) in ledger.kept.items():
        name = names.get(layer)
        if name is None or name not in before or len(keep_in) == before[name].in_channels:
            continue
        if (len(keep_out), len(keep_in)) == (layer.out_channels, layer.in_channels):
            found[name] = layer, keep_out
    return found


class _Stop(Exception):
    """Ends a forward pass once the layer being rebuilt has been reached (nothing after it is needed)."""


def _run_to(model: nn.Module, layer: nn.Module, x: torch.Tensor, seen: Callable[[tuple, torch.Tensor], None]) -> None:
    """Run `model` on `x` until `layer` has run; `seen(inputs, output)` of that layer, then stop."""

    def hook(_m, inputs, output):
        seen(inputs, output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()


def execution_order(model: nn.Module, layers: Iterable[nn.Module], x: torch.Tensor) -> list[nn.Module]:
    """`layers` in the order a forward pass of `model` on `x` runs them (those it does not run are left out)."""
    wanted, order = set(layers), []
    handles = [m.register_forward_hook(lambda m, _x, _y: order.append(m)) for m in wanted]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def reconstruct_consumers(
    reference: nn.Module,
    model: nn.Module,
    ledger: ChannelLedger,
    images: Sequence[torch.Tensor],
    ridge: float = RIDGE,
    desc: str = "reconstruct",
) -> list[tuple[str, float, float]]:
    """Rebuild the consumers of a cut (see the module docstring) in place, one after the other in the order the model
    runs them, each from inputs that the ones before it already give as rebuilt; both models run in eval mode.

    Solving all at once from the cut model's inputs fails: each layer then also makes up for the errors of the layers
    before it, which those layers' own rebuilding removes, and the corrections add up (on a converged YOLOv8n cut to
    x1.42 fewer MACs, mAP50-95 0.05 where the plain cut kept 0.45). One pass per layer over the images, each forward
    pass stopped at the layer.

    Args:
        reference (nn.Module): The model before the cut (same module names).
        model (nn.Module): The cut model, changed in place.
        ledger (ChannelLedger): What the cut removed, recorded on `model`'s layers.
        images (Sequence[torch.Tensor]): Float image batches in [0, 1] (read once per layer).
        ridge (float): Tikhonov term, a share of the mean diagonal of X^T X.
        desc (str): The progress bar's label (one step per rebuilt layer).

    Returns:
        (list[tuple[str, float, float]]): Each rebuilt layer's name and its output error (share of the output's energy)
            with the weights the cut left and with the rebuilt ones, in the order they were rebuilt.
    """
    layers = consumers(reference, model, ledger)
    if not layers or not images:
        return []
    before = dict(reference.named_modules())
    by_layer = {layer: name for name, (layer, _) in layers.items()}
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    modes = reference.training, model.training
    errors = []
    try:
        reference.eval(), model.eval()
        order = execution_order(model, by_layer, images[0][:1].to(device))
        for layer in TQDM(order, desc=desc, total=len(order)):
            name = by_layer[layer]
            eq = _NormalEquations(*layers[name])  # one layer's equations at a time: X^T X is d x d, d up to 5760
            for batch in images:
                x = batch.to(device)
                _run_to(reference, before[name], x, lambda _i, y: setattr(eq, "target", y[:, eq.keep_out.to(y.device)]))
                _run_to(model, layer, x, lambda i, _y: eq.add(i[0], generator))
            errors.append((name, *eq.solve(ridge)))
    finally:
        reference.train(modes[0]), model.train(modes[1])
    return [(name, before, after) for name, before, after in errors if before == before]


def rebuilt_summary(errors: list[tuple[str, float, float]], images: int) -> str:
    """One log line on what `reconstruct_consumers` did: how many layers, on how many images, their median error."""
    before, after = (float(torch.tensor([e[i] for e in errors]).median()) if errors else 0.0 for i in (1, 2))
    return (f"{len(errors)} layers the cut fed less rebuilt on {images} training images, output error (median) "
            f"{before:.1%} -> {after:.1%}")
