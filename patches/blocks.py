"""Prunable twins of the Ultralytics blocks whose channel split stops DepGraph channel pruning.

`C2f`, `C3k2` and `C2PSA` run one `cv1` conv that produces ``2 * c`` channels and then `chunk`/`split` its output in
two halves. torch-pruning cannot prune across that split, so the halves (and everything wired to them) stay frozen.
The twins below compute the same function with two separate convs, `cv0` (first half) and `cv1` (second half), so each
half is an ordinary conv output that DepGraph can prune.

Twins can be built from scratch with the same arguments as the original, or from a trained original with
`from_block`, which transfers the weights exactly. `replace_blocks` swaps every original in a model for its twin.

Examples:
    >>> from ultralytics.nn.tasks import DetectionModel
    >>> model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    >>> replace_blocks(model) > 0
    True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, Bottleneck, C2f, C3k, C3k2, PSABlock
from ultralytics.nn.modules.conv import Conv

__all__ = ("C2PSA_v2", "C2f_v2", "C3k2_v2", "TWINS", "replace_blocks")


def _new_param(src: nn.Parameter, index: slice) -> nn.Parameter:
    """Return a new parameter holding ``src[index]`` with the dtype, device and `requires_grad` of `src`."""
    return nn.Parameter(src.detach()[index].clone(), requires_grad=src.requires_grad)


def _split_conv(conv: Conv, sizes: Sequence[int]) -> list[Conv]:
    """Split a `Conv` (conv + optional BatchNorm + activation) along its output channels.

    Works on unfused (conv without bias + `bn`) and fused (conv with bias, no `bn`) modules; every other attribute,
    the activation included, is carried over to each part.

    Args:
        conv (Conv): Module to split; its `conv` must have ``groups == 1``.
        sizes (Sequence[int]): Output channels of each part, summing to ``conv.conv.out_channels``.

    Returns:
        (list[Conv]): One module per entry of `sizes`, each computing its slice of the output of `conv` exactly.

    Raises:
        ValueError: If the sizes do not add up, the conv is grouped, or a submodule other than Conv2d/BatchNorm2d
            holds parameters or buffers (e.g. a per-channel activation).
    """
    src = conv.conv
    if sum(sizes) != src.out_channels:
        raise ValueError(f"split sizes {tuple(sizes)} do not sum to {src.out_channels} output channels")
    if src.groups != 1:
        raise ValueError(f"cannot split a grouped conv (groups={src.groups}) along its output channels")
    # Deep-copying with every tensor pre-registered in the memo shares them instead of copying full-size weights that
    # would be thrown away; they are all replaced by slices below. The shared default activation stays shared.
    tensors = {id(t): t for t in (*conv.parameters(), *conv.buffers())}
    tensors[id(Conv.default_act)] = Conv.default_act
    tensors[id(conv.act)] = conv.act  # as loaded from a checkpoint: the one activation all Convs of a block share
    parts, start = [], 0
    for n in sizes:
        index = slice(start, start + n)
        start += n
        part = copy.deepcopy(conv, memo=dict(tensors))
        for m in part.modules():
            if isinstance(m, nn.Conv2d):
                m.out_channels = n
                m.weight = _new_param(m.weight, index)
                if m.bias is not None:
                    m.bias = _new_param(m.bias, index)
            elif isinstance(m, nn.BatchNorm2d):
                m.num_features = n
                if m.affine:
                    m.weight = _new_param(m.weight, index)
                    m.bias = _new_param(m.bias, index)
                if m.track_running_stats:
                    m.running_mean = m.running_mean[index].clone()
                    m.running_var = m.running_var[index].clone()
                    m.num_batches_tracked = m.num_batches_tracked.clone()
        if any(id(t) in tensors for t in (*part.parameters(), *part.buffers())):
            raise ValueError(f"cannot split {type(conv).__name__}: a submodule holds tensors that cannot be sliced")
        parts.append(part)
    return parts


def empty_module(cls: type[nn.Module]) -> nn.Module:
    """Create an instance of `cls` with no submodules, bypassing its `__init__` (filled in by `from_block`)."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    return obj


def finish_block(twin: nn.Module, block: nn.Module) -> nn.Module:
    """Carry the Ultralytics graph attributes and the training flag of `block` over to `twin`.

    Args:
        twin (nn.Module): Newly built twin.
        block (nn.Module): Original block it replaces.

    Returns:
        (nn.Module): `twin`, with `f` and `i` copied when present, `type` set to the twin's import path, `np` set to
            its parameter count, and `training` equal to the original's.
    """
    for name in ("f", "i"):
        if hasattr(block, name):
            setattr(twin, name, getattr(block, name))
    twin.type = f"{type(twin).__module__}.{type(twin).__name__}"
    twin.np = sum(p.numel() for p in twin.parameters())
    # Only the flag of the twin itself: moved and split submodules already keep their own mode, which a recursive
    # train() would overwrite (e.g. BatchNorms frozen in eval inside a training model).
    twin.training = block.training
    return twin


def _check_split(block: nn.Module) -> int:
    """Return the hidden channels `c` of `block`, checking that its `cv1` produces ``2 * c`` channels."""
    c = block.c
    if block.cv1.conv.out_channels != 2 * c:
        raise ValueError(
            f"{type(block).__name__}.cv1 has {block.cv1.conv.out_channels} output channels, expected 2 * c = {2 * c}"
        )
    return c


def _twin_with_split_cv1(cls: type, block: nn.Module) -> nn.Module:
    """Build a `cls` twin of `block`: `cv1` split in two along its output channels, `cv2` and `m` moved as they are."""
    c = _check_split(block)
    twin = empty_module(cls)
    twin.c = c
    twin.cv0, twin.cv1 = _split_conv(block.cv1, (c, c))
    twin.cv2 = block.cv2
    twin.m = block.m
    return finish_block(twin, block)


class C2f_v2(nn.Module):
    """Prunable twin of `C2f`: the first conv is split into `cv0` and `cv1` instead of chunking one output.

    Deliberately not a subclass of `C2f`: Ultralytics' exporter replaces `forward` with `forward_split` on every `C2f`
    instance, which would bring the split back.

    Attributes:
        c (int): Hidden channels of each branch.
        cv0 (Conv): 1x1 conv producing the first half (``chunk(2, 1)[0]`` of the original `cv1`).
        cv1 (Conv): 1x1 conv producing the second half, the input of the first block in `m`.
        cv2 (Conv): 1x1 conv fusing the ``2 + len(m)`` concatenated branches.
        m (nn.ModuleList): Bottleneck blocks applied in a chain.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        """Initialize with the same arguments as `C2f`.

        Args:
            c1 (int): Input channels.
            c2 (int): Output channels.
            n (int): Number of Bottleneck blocks.
            shortcut (bool): Whether to use shortcut connections.
            g (int): Groups for convolutions.
            e (float): Expansion ratio.
        """
        super().__init__()
        self.c = int(c2 * e)
        self.cv0 = Conv(c1, self.c, 1, 1)
        self.cv1 = Conv(c1, self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run both input convs, chain the blocks on the second branch and fuse all branches.

        Args:
            x (torch.Tensor): Input of shape (B, c1, H, W).

        Returns:
            (torch.Tensor): Output of shape (B, c2, H, W).
        """
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    @classmethod
    def from_block(cls, block: nn.Module) -> C2f_v2:
        """Build the twin of a (trained) `C2f`-like block with an exact weight transfer.

        `block.cv1` is split along its output channels into `cv0` and `cv1`; `cv2` and `m` are moved as they are, so
        their parameters are the very same objects.

        Args:
            block (nn.Module): A `C2f` (or a block with the same `c`/`cv1`/`cv2`/`m` layout and forward).

        Returns:
            (C2f_v2): The twin, computing the same function, in the same training mode as `block`.
        """
        return _twin_with_split_cv1(cls, block)


class C3k2_v2(C2f_v2):
    """Prunable twin of `C3k2` (a `C2f` whose blocks are Bottleneck, C3k, or Bottleneck + PSABlock attention).

    `from_block` keeps the original `m` unchanged, whatever its blocks are.
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        c3k: bool = False,
        e: float = 0.5,
        attn: bool = False,
        g: int = 1,
        shortcut: bool = True,
    ):
        """Initialize with the same arguments as `C3k2`.

        Args:
            c1 (int): Input channels.
            c2 (int): Output channels.
            n (int): Number of blocks.
            c3k (bool): Whether to use C3k blocks.
            e (float): Expansion ratio.
            attn (bool): Whether to use Bottleneck + PSABlock attention blocks.
            g (int): Groups for convolutions.
            shortcut (bool): Whether to use shortcut connections.
        """
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(
            nn.Sequential(
                Bottleneck(self.c, self.c, shortcut, g),
                PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)),
            )
            if attn
            else C3k(self.c, self.c, 2, shortcut, g)
            if c3k
            else Bottleneck(self.c, self.c, shortcut, g)
            for _ in range(n)
        )


class C2PSA_v2(nn.Module):
    """Prunable twin of `C2PSA`: `cv1` is split into `cv0` (pass-through half) and `cv1` (attention half).

    Attributes:
        c (int): Hidden channels of each branch.
        cv0 (Conv): 1x1 conv producing the pass-through half `a`.
        cv1 (Conv): 1x1 conv producing the half `b` that goes through the PSABlocks.
        cv2 (Conv): 1x1 conv fusing ``cat(a, m(b))``.
        m (nn.Sequential): PSABlock modules.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        """Initialize with the same arguments as `C2PSA`.

        Args:
            c1 (int): Input channels.
            c2 (int): Output channels, equal to `c1`.
            n (int): Number of PSABlock modules.
            e (float): Expansion ratio.
        """
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv0 = Conv(c1, self.c, 1, 1)
        self.cv1 = Conv(c1, self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the PSABlocks to the second branch and fuse it with the first.

        Args:
            x (torch.Tensor): Input of shape (B, c1, H, W).

        Returns:
            (torch.Tensor): Output of shape (B, c1, H, W).
        """
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))

    @classmethod
    def from_block(cls, block: nn.Module) -> C2PSA_v2:
        """Build the twin of a (trained) `C2PSA` with an exact weight transfer.

        Args:
            block (nn.Module): The `C2PSA` to convert; `cv2` and `m` are moved, `cv1` is split.

        Returns:
            (C2PSA_v2): The twin, computing the same function, in the same training mode as `block`.
        """
        return _twin_with_split_cv1(cls, block)


# Exact types only: subclasses such as C2fAttn (extra `guide` input) or C2fCIB have other forwards or are not covered.
TWINS: dict[type[nn.Module], type[nn.Module]] = {C2f: C2f_v2, C3k2: C3k2_v2, C2PSA: C2PSA_v2}


def swap_children(model: nn.Module, convert) -> int:
    """Replace, in place, every submodule `child` of `model` for which `convert(child)` is not None; return how many.

    Parents are updated by attribute name (index names for nn.Sequential/nn.ModuleList), so Ultralytics layer
    attributes and routing stay valid; a module reachable from several parents is converted once and the result used
    everywhere; the converted modules' own children are visited too.
    """
    done: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(original) -> (original, new); holding the original keeps
    # its id from being reused by a module created later in the walk
    visited: set[int] = set()

    def visit(parent: nn.Module) -> None:
        if id(parent) in visited:
            return
        visited.add(id(parent))
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) in done:
                setattr(parent, name, done[id(child)][1])
                continue
            new = convert(child)
            if new is not None:
                done[id(child)] = (child, new)
                setattr(parent, name, new)
                child = new
            visit(child)

    visit(model)
    return len(done)


def replace_blocks(model: nn.Module) -> int:
    """Swap, in place, every block listed in `TWINS` anywhere in `model` for its twin built with `from_block`.

    Parents are updated by attribute name (index names for nn.Sequential/nn.ModuleList), so Ultralytics layer
    attributes (`f`, `i`, `type`, `np`) and the model's routing stay valid. A module reachable from several parents
    is converted once and the same twin is used everywhere. Calling it again replaces nothing.

    Args:
        model (nn.Module): Model to convert, e.g. an `ultralytics.nn.tasks.DetectionModel`. If `model` itself is a
            block to replace it is left alone (there is no parent to assign on); convert it with `from_block`.

    Returns:
        (int): Number of blocks replaced.
    """
    return swap_children(model, lambda m: TWINS[type(m)].from_block(m) if type(m) in TWINS else None)
