"""Generate a small synthetic dataset in Ultralytics YOLO format, for detect, segment, pose or OBB.

Each image has a textured, noisy background and 1..max_objects filled shapes of random color, size and position. The
class of an object is its shape type (square, circle, triangle, ...), so a model can learn the set in a few epochs;
it is meant for smoke tests and quick pruning experiments without downloading anything. What a label says of an
object depends on the task:

- detect: its box, ``cls cx cy w h``;
- segment: its outline, ``cls x1 y1 x2 y2 ...`` (the outer contour of its mask);
- pose: its box and four keypoints, the extreme points of the shape (top, right, bottom, left), ``cls cx cy w h
  x y v ...``; data.yaml gets ``kpt_shape: [4, 3]`` and ``flip_idx: [0, 3, 2, 1]``;
- obb: the shape is drawn rotated by a random angle and labelled with its rotated box, ``cls x1 y1 ... x4 y4``.

Layout written under ``root``::

    images/train/*.jpg   images/val/*.jpg
    labels/train/*.txt   labels/val/*.txt    (one line per object, normalized, 6 decimals)
    data.yaml            (absolute path, train/val, names, and the generation parameters under "synthetic")

The output is bit-identical for the same parameters. ``data.yaml`` is written last (atomically), so an interrupted
run never leaves a ``data.yaml`` pointing at a half-written set; a finished set with the same parameters is reused.

Examples:
    >>> from tools.make_dataset import make_synthetic_dataset
    >>> data_yaml = make_synthetic_dataset("datasets/synthetic", n_train=64, n_val=16, imgsz=128, nc=3)

    python tools/make_dataset.py --out datasets/synthetic --n-train 64 --n-val 16 --imgsz 128 --nc 3 --seed 0
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml
from ultralytics.utils import LOGGER

SHAPES = ("square", "circle", "triangle", "cross", "ring", "diamond", "star", "hexagon")
FORMAT_VERSION = 1  # bump when the drawing changes, so cached sets with old pixels are regenerated
IMG_SUFFIX = ".jpg"
JPEG_QUALITY = 95
SPLITS = ("train", "val")
MARKER = ".synthetic-incomplete"  # present while a set is being written
SIZE_RANGE = (0.15, 0.45)  # object extent as a fraction of the image size
SMALL_SIZE_RANGE = (0.05, 0.12)  # the extent of a small object (`small`)
PLACEMENT_TRIES = 30
TASKS = ("detect", "segment", "pose", "obb")
KPT_SHAPE = [4, 3]  # pose: top, right, bottom, left extreme point, each (x, y, visibility)
FLIP_IDX = [0, 3, 2, 1]  # a horizontal flip swaps right and left


def _check_int(name: str, value: object, low: int, high: int | None, flag: str) -> None:
    """Raise ValueError with a one-line hint unless ``value`` is an int in [low, high].

    Args:
        name (str): Argument name used in the message.
        value (object): Value to check.
        low (int): Smallest allowed value.
        high (int | None): Largest allowed value, or None for no upper bound.
        flag (str): CLI flag named in the hint.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"make_synthetic_dataset: {name}={value!r} is invalid; pass an integer {bound} ({flag}).")


def _check_share(name: str, value: object, high: float, flag: str) -> None:
    """Raise ValueError with a one-line hint unless ``value`` is a number in [0, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        hint = f"pass a number from 0 to {high} ({flag})"
        raise ValueError(f"make_synthetic_dataset: {name}={value!r} is invalid; {hint}.")


def validate_args(
    n_train: int, n_val: int, imgsz: int, nc: int, max_objects: int, seed: int, clutter: int = 0,
    occlusion: float = 0.0, small: float = 0.0, task: str = "detect",
) -> None:  # fmt: skip
    """Validate the generation parameters (see `make_synthetic_dataset`).

    Args:
        n_train (int): Number of training images, >= 1.
        n_val (int): Number of validation images, >= 1.
        imgsz (int): Square image size in pixels, >= 32.
        nc (int): Number of classes, 1..len(SHAPES).
        max_objects (int): Maximum objects per image, >= 1.
        seed (int): Random seed, >= 0.
        clutter (int): Maximum unlabelled distractors per image, >= 0.
        occlusion (float): Share of an object that may lie on earlier ones, 0..0.5.
        small (float): Share of small objects, 0..1.
        task (str): One of TASKS.

    Raises:
        ValueError: One readable line naming the bad argument and the fix.
    """
    if task not in TASKS:
        raise ValueError(f"make_synthetic_dataset: task={task!r} is invalid; pass one of {', '.join(TASKS)} (--task).")
    _check_int("n_train", n_train, 1, None, "--n-train")
    _check_int("n_val", n_val, 1, None, "--n-val")
    _check_int("imgsz", imgsz, 32, None, "--imgsz")
    _check_int("nc", nc, 1, len(SHAPES), "--nc")
    _check_int("max_objects", max_objects, 1, None, "--max-objects")
    _check_int("seed", seed, 0, None, "--seed")
    _check_int("clutter", clutter, 0, None, "--clutter")
    _check_share("occlusion", occlusion, 0.5, "--occlusion")
    _check_share("small", small, 1.0, "--small")


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """Draw a textured noisy background: a base color, low-frequency blotches and per-pixel noise.

    Args:
        rng (np.random.Generator): Random generator of this image.
        imgsz (int): Image size in pixels.

    Returns:
        (np.ndarray): Float32 image of shape (imgsz, imgsz, 3) in [0, 255].
    """
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    grid = rng.uniform(-35, 35, size=(6, 6, 3)).astype(np.float32)
    blotches = cv2.resize(grid, (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 10, size=(imgsz, imgsz, 3)).astype(np.float32)
    return np.clip(base + blotches + noise, 0, 255)


def _object_color(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    """Pick a random color that contrasts with the background mean.

    Args:
        rng (np.random.Generator): Random generator of this image.
        bg_mean (np.ndarray): Mean background color, shape (3,).

    Returns:
        (np.ndarray): Float32 color, shape (3,).
    """
    for _ in range(20):
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.linalg.norm(color - bg_mean) >= 110:
            return color
    return (255 - bg_mean).astype(np.float32)  # fallback: complementary color


def _polygon(cx: float, cy: float, a: float, b: float, radii: list[float], start: float) -> np.ndarray:
    """Vertices of a (possibly star-shaped) polygon with alternating radii, as int32 pixel points.

    Args:
        cx (float): Center x.
        cy (float): Center y.
        a (float): Half width.
        b (float): Half height.
        radii (list[float]): Relative radius of each vertex, in order.
        start (float): Angle of the first vertex in radians (0 = right, -pi/2 = top).

    Returns:
        (np.ndarray): Points of shape (len(radii), 2).
    """
    angles = start + 2 * np.pi * np.arange(len(radii)) / len(radii)
    r = np.asarray(radii)
    pts = np.stack([cx + a * r * np.cos(angles), cy + b * r * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def draw_shape_mask(shape: str, imgsz: int, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Rasterize one filled shape into a binary mask.

    Args:
        shape (str): One of SHAPES.
        imgsz (int): Mask size in pixels.
        cx (float): Center x in pixels.
        cy (float): Center y in pixels.
        a (float): Half width in pixels.
        b (float): Half height in pixels.

    Returns:
        (np.ndarray): Bool mask of shape (imgsz, imgsz); pixels outside the image are simply not drawn.
    """
    m = np.zeros((imgsz, imgsz), np.uint8)
    c, ax = (round(cx), round(cy)), (max(round(a), 1), max(round(b), 1))
    if shape == "square":
        cv2.rectangle(m, (round(cx - a), round(cy - b)), (round(cx + a), round(cy + b)), 255, -1)
    elif shape == "circle":
        cv2.ellipse(m, c, ax, 0, 0, 360, 255, -1)
    elif shape == "ring":
        cv2.ellipse(m, c, ax, 0, 0, 360, 255, -1)
        cv2.ellipse(m, c, (max(round(a * 0.55), 1), max(round(b * 0.55), 1)), 0, 0, 360, 0, -1)
    elif shape == "cross":
        ta, tb = a * 0.3, b * 0.3
        cv2.rectangle(m, (round(cx - a), round(cy - tb)), (round(cx + a), round(cy + tb)), 255, -1)
        cv2.rectangle(m, (round(cx - ta), round(cy - b)), (round(cx + ta), round(cy + b)), 255, -1)
    elif shape == "triangle":
        pts = np.round([[cx, cy - b], [cx + a, cy + b], [cx - a, cy + b]]).astype(np.int32)
        cv2.fillPoly(m, [pts], 255)
    elif shape == "diamond":
        cv2.fillPoly(m, [_polygon(cx, cy, a, b, [1.0] * 4, -np.pi / 2)], 255)
    elif shape == "star":
        cv2.fillPoly(m, [_polygon(cx, cy, a, b, [1.0, 0.42] * 5, -np.pi / 2)], 255)
    elif shape == "hexagon":
        cv2.fillPoly(m, [_polygon(cx, cy, a, b, [1.0] * 6, 0.0)], 255)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}.")
    return m > 0


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight normalized box around the set pixels of a mask.

    Pixel i covers [i, i + 1), so a mask spanning columns x0..x1 gives the box edges x0 and x1 + 1.

    Args:
        mask (np.ndarray): Bool mask of shape (h, w).

    Returns:
        (tuple[float, float, float, float] | None): (cx, cy, w, h) normalized to [0, 1], or None for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)


def rotate_mask(mask: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a bool mask about the center of its set pixels (nearest neighbour, same size)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return mask
    matrix = cv2.getRotationMatrix2D((float(xs.mean()), float(ys.mean())), degrees, 1.0)
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST) > 0


def _place_shape(
    rng: np.random.Generator, shape: str, imgsz: int, occupied: np.ndarray, size_range=SIZE_RANGE, overlap: float = 0.0,
    rotate: bool = False,
) -> np.ndarray | None:  # fmt: skip
    """Find a random size and position for a shape that overlaps already drawn objects by at most `overlap`.

    Args:
        rng (np.random.Generator): Random generator of this image.
        shape (str): One of SHAPES.
        imgsz (int): Image size in pixels.
        occupied (np.ndarray): Bool mask of pixels already used (dilated objects).
        size_range (tuple): Extent range as a fraction of the image size.
        overlap (float): Largest share of the new shape's area that may cover earlier objects (0 = none).
        rotate (bool): Draw the shape elongated (half as high as wide) and rotated by a random angle (for OBB).

    Returns:
        (np.ndarray | None): Bool mask of the placed shape, or None if no free spot was found.
    """
    for _ in range(PLACEMENT_TRIES):
        size = rng.uniform(*size_range) * imgsz
        a, b = size / 2, size * (rng.uniform(0.4, 0.6) if rotate else rng.uniform(0.8, 1.25)) / 2
        # the center may sit slightly outside the fully-inside range, so some shapes are clipped by the border
        cx = rng.uniform(a * 0.8, imgsz - a * 0.8)
        cy = rng.uniform(b * 0.8, imgsz - b * 0.8)
        mask = draw_shape_mask(shape, imgsz, cx, cy, a, b)
        if rotate:
            mask = rotate_mask(mask, float(rng.uniform(0, 180)))
        area = mask.sum()
        if area >= 16 and (mask & occupied).sum() <= overlap * area:
            return mask
    return None


def _draw_clutter(rng: np.random.Generator, img: np.ndarray, n: int, nc: int) -> None:
    """Draw `n` unlabelled distractors: lines, blobs, and shapes of the classes this set does not label."""
    imgsz = img.shape[0]
    for _ in range(n):
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        kind = int(rng.integers(0, 3 if nc < len(SHAPES) else 2))
        if kind == 0:
            p1, p2 = (tuple(int(v) for v in rng.integers(0, imgsz, size=2)) for _ in range(2))
            cv2.line(img, p1, p2, color, thickness=int(rng.integers(1, max(2, imgsz // 40) + 1)))
        elif kind == 1:
            center = tuple(int(v) for v in rng.integers(0, imgsz, size=2))
            long = int(rng.integers(max(4, imgsz // 20), max(5, imgsz // 8)))
            axes = (long, max(1, long // int(rng.integers(3, 6))))  # elongated: never mistaken for a circle
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:  # a shape of an unlabelled class: a hard negative
            mask = _place_shape(rng, SHAPES[int(rng.integers(nc, len(SHAPES)))], imgsz, np.zeros(img.shape[:2], bool))
            if mask is not None:
                img[mask] = color


def mask_outline(mask: np.ndarray) -> list[float] | None:
    """The outer contour of the largest blob of a mask as normalized x, y pairs (at least 3 points), or None."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    points = max(contours, key=cv2.contourArea).reshape(-1, 2)
    if len(points) < 3:
        return None
    h, w = mask.shape
    return [v for x, y in points for v in ((x + 0.5) / w, (y + 0.5) / h)]


def mask_keypoints(mask: np.ndarray) -> list[float]:
    """The top, right, bottom and left extreme points of a mask, each as normalized (x, y, 2 = visible)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    top, bottom = xs[ys == ys.min()].mean(), xs[ys == ys.max()].mean()
    left, right = ys[xs == xs.min()].mean(), ys[xs == xs.max()].mean()
    points = ((top, ys.min()), (xs.max(), right), (bottom, ys.max()), (xs.min(), left))
    return [v for x, y in points for v in ((x + 0.5) / w, (y + 0.5) / h, 2.0)]


def mask_rotated_box(mask: np.ndarray) -> list[float]:
    """The four corners of the smallest rotated rectangle around a mask, as normalized x, y pairs."""
    ys, xs = np.nonzero(mask)
    corners = cv2.boxPoints(cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32)))
    h, w = mask.shape
    return [v for x, y in corners for v in (float(np.clip((x + 0.5) / w, 0, 1)), float(np.clip((y + 0.5) / h, 0, 1)))]


def mask_label(mask: np.ndarray, cls: int, task: str = "detect") -> tuple | None:
    """The label of one object for `task` (see the module docstring), or None when the mask gives none."""
    box = mask_to_box(mask)
    if box is None:
        return None
    if task == "segment":
        outline = mask_outline(mask)
        return None if outline is None else (cls, *outline)
    if task == "pose":
        return (cls, *box, *mask_keypoints(mask))
    if task == "obb":
        return (cls, *mask_rotated_box(mask))
    return (cls, *box)


def render_image(
    rng: np.random.Generator, imgsz: int, nc: int, max_objects: int, clutter: int = 0, occlusion: float = 0.0,
    small: float = 0.0, task: str = "detect",
) -> tuple[np.ndarray, list]:  # fmt: skip
    """Render one image and its labels.

    Args:
        rng (np.random.Generator): Random generator of this image.
        imgsz (int): Image size in pixels.
        nc (int): Number of classes (the first nc SHAPES).
        max_objects (int): Maximum number of objects.
        clutter (int): Maximum unlabelled distractors, drawn under the objects.
        occlusion (float): Share of an object that may lie on earlier ones; an object keeps its whole box.
        small (float): Share of objects drawn small (`SMALL_SIZE_RANGE`).
        task (str): What the labels describe (see `mask_label`); `obb` draws the shapes rotated.

    Returns:
        (tuple[np.ndarray, list]): BGR uint8 image and a list of labels (cls first) with at least one entry.
    """
    img = _background(rng, imgsz)
    bg_mean = img.reshape(-1, 3).mean(0)
    if clutter:
        _draw_clutter(rng, img, int(rng.integers(0, clutter + 1)), nc)
    occupied = np.zeros((imgsz, imgsz), bool)
    kernel = np.ones((5, 5), np.uint8)
    labels = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, nc))
        size_range = SMALL_SIZE_RANGE if small and rng.uniform() < small else SIZE_RANGE
        mask = _place_shape(rng, SHAPES[cls], imgsz, occupied, size_range, occlusion, rotate=task == "obb")
        label = None if mask is None else mask_label(mask, cls, task)
        if label is None:
            continue  # image is full; the first object always fits on the empty canvas
        img[mask] = _object_color(rng, bg_mean)
        occupied |= cv2.dilate(mask.astype(np.uint8), kernel) > 0 if not occlusion else mask
        labels.append(label)
    img = np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255)  # noise over objects, too
    return img.astype(np.uint8), labels


def format_labels(labels: list) -> str:
    """Format labels as YOLO txt lines: the class, then every value with 6 decimals.

    Args:
        labels (list): Tuples (cls, values...), e.g. (cls, cx, cy, w, h) for detection.

    Returns:
        (str): File content, one line per object.
    """
    return "".join(" ".join([str(c), *(f"{v:.6f}" for v in values)]) + "\n" for c, *values in labels)


def _params(n_train: int, n_val: int, imgsz: int, nc: int, max_objects: int, seed: int, **hard) -> dict:
    """Generation parameters as stored under ``synthetic:`` in data.yaml (the options only when set)."""
    params = dict(n_train=int(n_train), n_val=int(n_val), imgsz=int(imgsz), nc=int(nc), max_objects=int(max_objects),
                  seed=int(seed), version=FORMAT_VERSION)  # fmt: skip
    return {**params, **{k: v for k, v in hard.items() if v}}


def _is_up_to_date(root: Path, params: dict) -> bool:
    """Whether ``root`` already holds a complete synthetic set made with ``params``.

    Args:
        root (Path): Dataset root (absolute).
        params (dict): Expected generation parameters.

    Returns:
        (bool): True if data.yaml matches and the image and label counts are complete.
    """
    yaml_file = root / "data.yaml"
    if not yaml_file.is_file() or (root / MARKER).exists():
        return False
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return False
    if not isinstance(data, dict) or data.get("synthetic") != params or data.get("path") != str(root):
        return False
    for split in SPLITS:
        n = params[f"n_{split}"]
        if len(list((root / "images" / split).glob(f"*{IMG_SUFFIX}"))) != n:
            return False
        if len(list((root / "labels" / split).glob("*.txt"))) != n:
            return False
    return True


def _prepare_root(root: Path) -> None:
    """Clear a previous synthetic set in ``root`` (only the folders this tool writes) and mark it incomplete.

    Args:
        root (Path): Dataset root (absolute).

    Raises:
        ValueError: If ``root`` holds a dataset that this tool did not make.
    """
    yaml_file = root / "data.yaml"
    ours = (root / MARKER).exists()
    if yaml_file.is_file():
        try:
            data = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = None
        ours = ours or (isinstance(data, dict) and "synthetic" in data)
    foreign = [root / d / s for d in ("images", "labels") for s in SPLITS if (root / d / s).is_dir()]
    if (yaml_file.exists() or any(any(p.iterdir()) for p in foreign)) and not ours:
        raise ValueError(f"make_synthetic_dataset: '{root}' already holds a dataset not made by this tool; "
                         "pass an empty or new folder (--out).")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    yaml_file.unlink(missing_ok=True)  # no data.yaml may point at the set while it is rewritten
    for p in foreign:
        shutil.rmtree(p)
    for split in SPLITS:
        (root / "labels" / f"{split}.cache").unlink(missing_ok=True)  # stale Ultralytics label caches


def _write_split(root: Path, split: str, n: int, params: dict) -> None:
    """Render and write the images and labels of one split.

    Args:
        root (Path): Dataset root (absolute).
        split (str): "train" or "val".
        n (int): Number of images.
        params (dict): Generation parameters.
    """
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # one independent stream per image: the same image for a given (seed, split, index), whatever n is
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
        hard = {k: params[k] for k in ("clutter", "occlusion", "small", "task") if k in params}
        img, labels = render_image(rng, params["imgsz"], params["nc"], params["max_objects"], **hard)
        ok, buf = cv2.imencode(IMG_SUFFIX, img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"cv2 could not encode image {split}/{i}")
        stem = f"{split}_{i:05d}"
        (img_dir / f"{stem}{IMG_SUFFIX}").write_bytes(buf.tobytes())
        (lbl_dir / f"{stem}.txt").write_text(format_labels(labels), encoding="utf-8")


def _write_yaml(root: Path, params: dict) -> Path:
    """Write data.yaml atomically (temp file + rename).

    Args:
        root (Path): Dataset root (absolute).
        params (dict): Generation parameters, stored under ``synthetic``.

    Returns:
        (Path): Path of data.yaml.
    """
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "names": {i: SHAPES[i] for i in range(params["nc"])},
        **({"kpt_shape": KPT_SHAPE, "flip_idx": FLIP_IDX} if params.get("task") == "pose" else {}),
        "synthetic": params,
    }
    yaml_file, tmp = root / "data.yaml", root / "data.yaml.tmp"
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(tmp, yaml_file)
    return yaml_file


def make_synthetic_dataset(
    root: str | Path,
    n_train: int = 64,
    n_val: int = 16,
    imgsz: int = 128,
    nc: int = 3,
    max_objects: int = 4,
    seed: int = 0,
    clutter: int = 0,
    occlusion: float = 0.0,
    small: float = 0.0,
    task: str = "detect",
) -> Path:
    """Generate (or reuse) a synthetic YOLO dataset of shapes for `task`.

    Args:
        root (str | Path): Output folder; created if missing.
        n_train (int): Number of training images, >= 1.
        n_val (int): Number of validation images, >= 1.
        imgsz (int): Square image size in pixels, >= 32.
        nc (int): Number of classes (shape types), 1..8.
        max_objects (int): Maximum objects per image (each image has at least one).
        seed (int): Random seed; the same seed gives bit-identical files.
        clutter (int): Up to this many unlabelled distractors per image (lines, blobs, shapes of unused classes).
        occlusion (float): Objects may lie on earlier ones by up to this share of their area (boxes stay whole).
        small (float): This share of the objects is small (5-12 % of the image side).
        task (str): detect, segment, pose or obb: what the labels describe (see the module docstring).

    Returns:
        (Path): Absolute path of the written ``data.yaml``.

    Raises:
        ValueError: On an invalid argument, or if ``root`` holds a dataset not made by this tool.
    """
    validate_args(n_train, n_val, imgsz, nc, max_objects, seed, clutter, occlusion, small, task)
    root = Path(root).expanduser().resolve()
    hard = dict(clutter=clutter, occlusion=occlusion, small=small, task=task if task != "detect" else None)
    params = _params(n_train, n_val, imgsz, nc, max_objects, seed, **hard)
    if _is_up_to_date(root, params):
        LOGGER.info(f"Synthetic dataset already up to date, reusing {root / 'data.yaml'}")
        return root / "data.yaml"
    _prepare_root(root)
    for split in SPLITS:
        _write_split(root, split, params[f"n_{split}"], params)
    yaml_file = _write_yaml(root, params)  # last: only a complete set gets a data.yaml
    (root / MARKER).unlink()
    LOGGER.info(f"Synthetic {task} dataset: {n_train} train + {n_val} val images, {nc} classes -> {yaml_file}")
    return yaml_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the synthetic-set options (`--out`, sizes, classes, seed) from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description="Generate a synthetic YOLO dataset of colored shapes.")
    p.add_argument("--task", default="detect", choices=TASKS, help="what the labels describe (default: detect)")
    p.add_argument("--out", default="datasets/synthetic", help="output folder (default: datasets/synthetic)")
    p.add_argument("--n-train", type=int, default=64, help="number of training images")
    p.add_argument("--n-val", type=int, default=16, help="number of validation images")
    p.add_argument("--imgsz", type=int, default=128, help="image size in pixels (square)")
    p.add_argument("--nc", type=int, default=3, help=f"number of classes, 1..{len(SHAPES)} ({', '.join(SHAPES)})")
    p.add_argument("--max-objects", type=int, default=4, help="maximum objects per image")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--clutter", type=int, default=0, help="up to this many unlabelled distractors per image")
    p.add_argument("--occlusion", type=float, default=0.0, help="share of an object that may cover earlier ones")
    p.add_argument("--small", type=float, default=0.0, help="share of small objects (5-12%% of the image side)")
    p.add_argument("--hard", action="store_true", help="shorthand for --clutter 6 --occlusion 0.35 --small 0.4")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Make the dataset from the command line and print its data.yaml path; exit status 2 on a bad argument."""
    args = parse_args(argv)
    try:
        hard = dict(clutter=6, occlusion=0.35, small=0.4) if args.hard else {}
        yaml_file = make_synthetic_dataset(
            args.out, args.n_train, args.n_val, args.imgsz, args.nc, args.max_objects, args.seed,
            **{"clutter": args.clutter, "occlusion": args.occlusion, "small": args.small, **hard}, task=args.task,
        )
    except ValueError as e:
        LOGGER.error(str(e))
        return 2
    print(yaml_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
