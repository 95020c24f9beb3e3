"""`reconstruct=N`: after a cut, rebuild every layer whose input lost channels so that its output matches the model's
before the cut, by linear least squares on N training images (the reconstruction step of He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks", and of ThiNet).

A cut removes output channels of some convolutions and so input channels of the layers that read them (their
consumers). What the removed inputs contributed to a consumer's output is lost, but the inputs that remain are
correlated with them and can take part of it over. For each consumer, with X the patches of its input in the cut
model and Y its output in the model before the cut (the channels it keeps, before BatchNorm), the new weights are

    W = argmin ||Y - X W||^2 + ridge * mean(diag(X^T X)) * ||W||^2,

solved from the normal equations accumulated over the images (one forward pass of each model per batch; a bias,
where the layer has one, is solved with it). Inputs come from the cut model as it is, so a consumer also corrects
what the layers before it changed. `ChannelLedger` records, as the dependency graph removes them, which of the
layer's original output and input channels each convolution keeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F

RIDGE = 1e-3  # Tikhonov term, a share of the mean diagonal of X^T X: keeps the solve stable where inputs are collinear
ROWS_PER_BATCH = 8192  # output positions sampled per layer and batch: bounds the cost of X^T X at large image sizes


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
        rows, y = rows.double(), y.double()
        self.xtx += rows.T @ rows
        self.xty += rows.T @ y
        self.yty += float((y * y).sum())
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


def consumers(reference: nn.Module, model: nn.Module, ledger: ChannelLedger) -> dict[str, _NormalEquations]:
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
            found[name] = _NormalEquations(layer, keep_out)
    return found


@torch.no_grad()
def reconstruct_consumers(
    reference: nn.Module, model: nn.Module, ledger: ChannelLedger, images: Iterable[torch.Tensor], ridge: float = RIDGE
) -> list[tuple[str, float, float]]:
    """Rebuild the consumers of a cut (see the module docstring) in place; both models are run in eval mode.

    Args:
        reference (nn.Module): The model before the cut (same module names).
        model (nn.Module): The cut model, changed in place.
        ledger (ChannelLedger): What the cut removed, recorded on `model`'s layers.
        images (Iterable[torch.Tensor]): Float image batches in [0, 1].
        ridge (float): Tikhonov term, a share of the mean diagonal of X^T X.

    Returns:
        (list[tuple[str, float, float]]): Each rebuilt layer's name and its output error (share of the output's energy)
            with the weights the cut left and with the rebuilt ones.
    """
    layers = consumers(reference, model, ledger)
    if not layers:
        return []
    before = dict(reference.named_modules())
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    hooks = []
    for name, eq in layers.items():
        def keep_target(_m, _x, y, eq=eq):
            eq.target = y[:, eq.keep_out.to(y.device)]

        def accumulate(_m, x, _y, eq=eq):
            eq.add(x[0], generator)

        hooks += [before[name].register_forward_hook(keep_target), eq.layer.register_forward_hook(accumulate)]
    modes = reference.training, model.training
    try:
        reference.eval(), model.eval()
        for batch in images:
            # one forward keeps every consumer's target at once: a few images at a time at large sizes
            for x in batch.to(device).split(max(1, int(16 * (160 / batch.shape[-1]) ** 2))):
                reference(x)
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
        reference.train(modes[0]), model.train(modes[1])
    errors = [(name, *eq.solve(ridge)) for name, eq in layers.items()]
    return [(name, before, after) for name, before, after in errors if before == before]
