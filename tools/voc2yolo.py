"""Convert a Pascal VOC dataset (XML annotations) to an Ultralytics YOLO detection dataset with a train/val split.

Input layouts:
    - standard: ``voc_root/Annotations/*.xml`` and ``voc_root/JPEGImages/*``;
    - flat: images and ``.xml`` files side by side in ``voc_root``.

Output layout under ``out`` (images are copied, the input is never modified)::

    images/train/*   images/val/*
    labels/train/*.txt   labels/val/*.txt   (lines "cls cx cy w h", normalized, 6 decimals)
    data.yaml        (absolute path, train/val, names)

Box convention: VOC pixel coordinates are 1-based and inclusive, so a box xmin..xmax covers the 0-based pixel columns
xmin-1 .. xmax-1, whose edges are x0 = xmin - 1 and x1 = xmax (likewise for y). Example: in a 100x50 image, the box
xmin=11, ymin=6, xmax=60, ymax=30 has edges x 10..60 and y 5..30, i.e. ``cx=0.35 cy=0.35 w=0.5 h=0.5``.
Edges are clipped to the image before normalizing; boxes that end up empty are dropped.

The output is first built in a temporary folder next to ``out`` and renamed into place at the end, so an error never
leaves a half-written ``out``.

Examples:
    >>> from tools.voc2yolo import convert_voc
    >>> data_yaml = convert_voc("VOCdevkit/VOC2012", "datasets/voc", val_ratio=0.2, seed=0)

    python tools/voc2yolo.py VOCdevkit/VOC2012 --out datasets/myvoc --val-ratio 0.2 --seed 0 --classes cat,dog
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import yaml
from ultralytics.utils import LOGGER

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class VocObject:
    """One annotated object: class name, difficult flag and VOC pixel box (1-based, inclusive)."""

    name: str
    difficult: bool
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


@dataclass
class VocImage:
    """One annotated image: XML path, image path, size and objects."""

    xml: Path
    image: Path
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


@dataclass
class Stats:
    """Counters for the end-of-run summary."""

    unknown: dict[str, int] = field(default_factory=dict)
    difficult: int = 0
    degenerate: int = 0
    missing_images: list[str] = field(default_factory=list)


def find_layout(voc_root: Path) -> tuple[Path, Path]:
    """Locate the annotation and image folders.

    Args:
        voc_root (Path): VOC root, standard or flat layout.

    Returns:
        (tuple[Path, Path]): (annotation folder, image folder).

    Raises:
        FileNotFoundError: If ``voc_root`` or its JPEGImages folder is missing.
    """
    if not voc_root.is_dir():
        raise FileNotFoundError(
            f"VOC folder '{voc_root}' not found; pass the folder holding Annotations/ and JPEGImages/ "
            "(or images and .xml files side by side)."
        )
    ann_dir = voc_root / "Annotations"
    if not ann_dir.is_dir():
        return voc_root, voc_root  # flat layout
    img_dir = voc_root / "JPEGImages"
    if not img_dir.is_dir():
        raise FileNotFoundError(
            f"'{voc_root}' has Annotations/ but no JPEGImages/ folder; put the images in '{img_dir}'."
        )
    return ann_dir, img_dir


def _text(node: ET.Element, tag: str) -> str | None:
    """Stripped text of a child element, or None if missing or empty."""
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text and child.text.strip() else None


def _number(node: ET.Element, tag: str, xml: Path) -> float:
    """Parse a required numeric child element.

    Args:
        node (ET.Element): Parent element.
        tag (str): Child tag name.
        xml (Path): XML file, named in the error.

    Returns:
        (float): Parsed value.

    Raises:
        ValueError: If the element is missing or not a number.
    """
    text = _text(node, tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        msg = f"bad annotation '{xml}': <{tag}> is missing or not a number ({text!r}); fix or delete this file."
        raise ValueError(msg) from None


def _find_image(xml: Path, root: ET.Element, img_dir: Path) -> Path | None:
    """Image of an annotation: ``<filename>`` in the image folder, else an image with the XML's stem.

    Args:
        xml (Path): Annotation file.
        root (ET.Element): Parsed XML root.
        img_dir (Path): Image folder.

    Returns:
        (Path | None): Image path, or None if not found.
    """
    filename = _text(root, "filename")
    if filename and Path(filename).suffix.lower() in IMG_SUFFIXES and (img_dir / Path(filename).name).is_file():
        return img_dir / Path(filename).name
    for suffix in IMG_SUFFIXES:
        for s in (suffix, suffix.upper()):
            if (img_dir / f"{xml.stem}{s}").is_file():
                return img_dir / f"{xml.stem}{s}"
    return None


def _image_size(root: ET.Element, image: Path, xml: Path) -> tuple[int, int]:
    """Image (width, height) from ``<size>``, falling back to reading the image when missing or zero.

    Args:
        root (ET.Element): Parsed XML root.
        image (Path): Image file.
        xml (Path): XML file, named in the error.

    Returns:
        (tuple[int, int]): Width and height in pixels.

    Raises:
        ValueError: If the size is missing and the image cannot be read.
    """
    size = root.find("size")
    if size is not None:
        try:
            w, h = int(float(_text(size, "width") or 0)), int(float(_text(size, "height") or 0))
        except ValueError:
            w = h = 0
        if w > 0 and h > 0:
            return w, h
    img = cv2.imread(str(image))
    if img is None:
        raise ValueError(f"'{xml}' has no usable <size> and image '{image}' cannot be read; fix or delete the pair.")
    return img.shape[1], img.shape[0]


def parse_voc_xml(xml: Path, img_dir: Path) -> VocImage | None:
    """Parse one VOC annotation file.

    Args:
        xml (Path): Annotation file.
        img_dir (Path): Folder holding the images.

    Returns:
        (VocImage | None): Parsed annotation, or None if its image is missing.

    Raises:
        ValueError: If the XML is corrupt or a box is malformed; the message names the file.
    """
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise ValueError(f"corrupt XML annotation '{xml}' ({e}); fix or delete this file and rerun.") from None
    image = _find_image(xml, root, img_dir)
    if image is None:
        return None
    width, height = _image_size(root, image, xml)
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name")
        bnd = obj.find("bndbox")
        if name is None or bnd is None:
            raise ValueError(f"bad annotation '{xml}': an <object> lacks <name> or <bndbox>; fix or delete this file.")
        box = tuple(_number(bnd, t, xml) for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (_text(obj, "difficult") or "0") not in {"0", "false", "False"}
        objects.append(VocObject(name, difficult, box))
    return VocImage(xml, image, width, height, objects)


def voc_box_to_yolo(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...] | None:
    """Convert a VOC box (1-based inclusive pixels) to a normalized YOLO box, clipped to the image.

    The box xmin..xmax covers 0-based pixel edges xmin-1 .. xmax (same for y): 1 is subtracted from xmin and ymin only.

    Args:
        box (tuple[float, float, float, float]): xmin, ymin, xmax, ymax in VOC pixels.
        width (int): Image width in pixels.
        height (int): Image height in pixels.

    Returns:
        (tuple[float, ...] | None): (cx, cy, w, h) in [0, 1], or None if the clipped box is empty.
    """
    xmin, ymin, xmax, ymax = box
    x0, x1 = min(max(xmin - 1, 0.0), width), min(max(xmax, 0.0), width)
    y0, y1 = min(max(ymin - 1, 0.0), height), min(max(ymax, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)


def yolo_lines(item: VocImage, class_ids: dict[str, int], skip_difficult: bool, stats: Stats) -> str:
    """YOLO label file content of one image.

    Args:
        item (VocImage): Parsed annotation.
        class_ids (dict[str, int]): Class name to id.
        skip_difficult (bool): Drop objects flagged difficult.
        stats (Stats): Counters updated with skipped objects.

    Returns:
        (str): Lines ``cls cx cy w h`` (empty for a background image).
    """
    lines = []
    for obj in item.objects:
        if skip_difficult and obj.difficult:
            stats.difficult += 1
            continue
        if obj.name not in class_ids:
            stats.unknown[obj.name] = stats.unknown.get(obj.name, 0) + 1
            continue
        box = voc_box_to_yolo(obj.box, item.width, item.height)
        if box is None:
            stats.degenerate += 1
            continue
        lines.append(f"{class_ids[obj.name]} " + " ".join(f"{v:.6f}" for v in box) + "\n")
    return "".join(lines)


def split_indices(n: int, val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic random train/val split.

    With 0 < val_ratio < 1 and n >= 2, both splits get at least one item.

    Args:
        n (int): Number of items.
        val_ratio (float): Fraction of items for validation, in [0, 1).
        seed (int): Random seed.

    Returns:
        (tuple[list[int], list[int]]): Sorted train indices and sorted val indices.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round(n * val_ratio)
    if val_ratio > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check_args(val_ratio: float, classes: list[str] | None) -> list[str] | None:
    """Validate val_ratio and normalize the class list.

    Args:
        val_ratio (float): Fraction for validation.
        classes (list[str] | None): Class names, or None.

    Returns:
        (list[str] | None): Stripped class names, or None.

    Raises:
        ValueError: On an invalid ratio or class list.
    """
    if isinstance(val_ratio, bool) or not isinstance(val_ratio, (int, float)) or not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio={val_ratio!r} is invalid; pass a number in [0, 1), e.g. --val-ratio 0.2.")
    if classes is None:
        return None
    names = [str(c).strip() for c in classes]
    if not names or any(not c for c in names) or len(set(names)) != len(names):
        raise ValueError(f"classes={classes!r} is invalid; pass unique non-empty names, e.g. --classes cat,dog.")
    return names


def _load_annotations(voc_root: Path, stats: Stats) -> list[VocImage]:
    """Parse every XML file of a VOC folder (all are validated before anything is written).

    Args:
        voc_root (Path): VOC root.
        stats (Stats): Counters updated with missing images.

    Returns:
        (list[VocImage]): Parsed annotations, sorted by XML name.

    Raises:
        FileNotFoundError: If the folders are missing.
        ValueError: If there are no XML files, a file is corrupt, or no image is found.
    """
    ann_dir, img_dir = find_layout(voc_root)
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise ValueError(f"no .xml annotation files in '{ann_dir}'; pass a Pascal VOC folder (Annotations/*.xml).")
    items = []
    for xml in xmls:
        item = parse_voc_xml(xml, img_dir)
        if item is None:
            stats.missing_images.append(xml.name)
        else:
            items.append(item)
    if not items:
        raise ValueError(f"no image found for any of the {len(xmls)} annotations; put the images in '{img_dir}'.")
    names = [i.image.stem for i in items]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ValueError(f"several images share the name stem(s) {dup}; rename them so each label file is unique.")
    return items


def _write_split(
    items: list[VocImage], split: str, tmp: Path, class_ids: dict, skip_difficult: bool, stats: Stats
) -> None:
    """Copy the images of one split and write their label files.

    Args:
        items (list[VocImage]): Annotations of this split.
        split (str): "train" or "val".
        tmp (Path): Output folder being built.
        class_ids (dict): Class name to id.
        skip_difficult (bool): Drop objects flagged difficult.
        stats (Stats): Counters.
    """
    img_dir, lbl_dir = tmp / "images" / split, tmp / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        shutil.copyfile(item.image, img_dir / item.image.name)
        text = yolo_lines(item, class_ids, skip_difficult, stats)
        (lbl_dir / f"{item.image.stem}.txt").write_text(text, encoding="utf-8")


def _log_summary(stats: Stats, n_train: int, n_val: int, names: list[str], yaml_file: Path) -> None:
    """Log the conversion result and one warning per kind of skipped input."""
    if stats.missing_images:
        LOGGER.warning(
            f"skipped {len(stats.missing_images)} annotation(s) without an image, e.g. {stats.missing_images[:5]}"
        )
    if stats.unknown:
        total, kinds = sum(stats.unknown.values()), sorted(stats.unknown)
        LOGGER.warning(f"skipped {total} object(s) of {len(kinds)} unknown class(es) not in classes: {kinds[:10]}")
    if stats.degenerate:
        LOGGER.warning(f"skipped {stats.degenerate} box(es) that are empty after clipping to the image")
    if stats.difficult:
        LOGGER.info(f"skipped {stats.difficult} object(s) flagged difficult")
    LOGGER.info(f"VOC -> YOLO: {n_train} train + {n_val} val images, {len(names)} classes -> {yaml_file}")


def convert_voc(
    voc_root: str | Path,
    out: str | Path,
    val_ratio: float = 0.2,
    seed: int = 0,
    classes: list[str] | None = None,
    skip_difficult: bool = False,
) -> Path:
    """Convert a Pascal VOC folder to a YOLO detection dataset.

    Args:
        voc_root (str | Path): VOC folder (Annotations/ + JPEGImages/, or images and XMLs side by side).
        out (str | Path): Output folder; must not exist or be empty.
        val_ratio (float): Fraction of images for validation, in [0, 1). With 0 there is no val split and
            data.yaml's ``val`` points at the training images.
        seed (int): Seed of the random split.
        classes (list[str] | None): Class names in id order; objects of other classes are skipped. None uses the
            sorted set of names found in the annotations.
        skip_difficult (bool): Drop objects flagged ``<difficult>1</difficult>``.

    Returns:
        (Path): Path of the written ``data.yaml``.

    Raises:
        FileNotFoundError: If ``voc_root`` or its image folder is missing.
        FileExistsError: If ``out`` exists and is not empty.
        ValueError: On a bad argument, no XML files, or a corrupt XML file (named in the message).
    """
    classes = _check_args(val_ratio, classes)
    voc_root, out = Path(voc_root).expanduser().resolve(), Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output '{out}' already exists and is not empty; delete it or choose another --out.")
    stats = Stats()
    items = _load_annotations(voc_root, stats)
    names = classes if classes is not None else sorted({o.name for i in items for o in i.objects})
    if not names:
        raise ValueError(f"no objects in any annotation under '{voc_root}'; pass --classes for a background-only set.")
    class_ids = {n: i for i, n in enumerate(names)}
    train_idx, val_idx = split_indices(len(items), val_ratio, seed)
    if not val_idx:
        LOGGER.warning("no validation images (val_ratio=0 or a single image); data.yaml 'val' uses the train images")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_split([items[i] for i in train_idx], "train", tmp, class_ids, skip_difficult, stats)
        _write_split([items[i] for i in val_idx], "val", tmp, class_ids, skip_difficult, stats)
        data = {
            "path": str(out),
            "train": "images/train",
            "val": "images/val" if val_idx else "images/train",
            "names": dict(enumerate(names)),
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty folder, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    yaml_file = out / "data.yaml"
    _log_summary(stats, len(train_idx), len(val_idx), names, yaml_file)
    return yaml_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the VOC root, `--out`, the split and the class options from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description="Convert a Pascal VOC dataset to Ultralytics YOLO format.")
    p.add_argument("voc_root", help="VOC folder (Annotations/ + JPEGImages/, or images and .xml side by side)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--val-ratio", type=float, default=0.2, help="fraction of images for validation, in [0, 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random train/val split")
    p.add_argument("--classes", default=None, help="comma-separated class names in id order (default: all found)")
    p.add_argument("--skip-difficult", action="store_true", help="drop objects flagged difficult")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Convert from the command line and print the data.yaml path; exit status 2 on an input error."""
    args = parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes is not None else None
    try:
        print(convert_voc(args.voc_root, args.out, args.val_ratio, args.seed, classes, args.skip_difficult))
    except (ValueError, OSError) as e:
        LOGGER.error(f"voc2yolo: {e}")
        return 2
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
