"""Tests for tools/make_dataset.py (synthetic YOLO set), tools/voc2yolo.py (Pascal VOC -> YOLO) and tools/benchmark.py
(the continue control, the convergence check, seeds). CPU, fast."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tools.voc2yolo as voc2yolo  # noqa: E402
from tools.make_dataset import SHAPES, draw_shape_mask, make_synthetic_dataset, mask_to_box  # noqa: E402
from tools.make_dataset import main as make_main  # noqa: E402
from tools.voc2yolo import convert_voc, split_indices, voc_box_to_yolo  # noqa: E402


@pytest.fixture
def no_font_download(monkeypatch):
    """check_det_dataset ends with check_font(), which may try the network; nothing may download in tests."""
    import ultralytics.data.utils as data_utils

    monkeypatch.setattr(data_utils, "check_font", lambda *a, **k: None)
    return data_utils.check_det_dataset


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def _read_labels(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in _files(root, "**/*")}


def _set_digest(root: Path) -> dict[str, str]:
    """Digests of a synthetic set's images (keyed by name) and labels (keyed 'l/<name>'); data.yaml left out."""
    return {**_tree_digest(root / "images"), **{f"l/{k}": v for k, v in _tree_digest(root / "labels").items()}}


# ----------------------------------------------------------------------------------------------- synthetic dataset
def test_synthetic_layout_and_labels(tmp_path):
    nc = 5
    yaml_file = make_synthetic_dataset(tmp_path / "syn", n_train=6, n_val=3, imgsz=64, nc=nc, max_objects=4, seed=3)
    root = tmp_path / "syn"
    assert yaml_file == root.resolve() / "data.yaml" and yaml_file.is_file()
    data = yaml.safe_load(yaml_file.read_text())
    assert data["path"] == str(root.resolve()) and Path(data["path"]).is_absolute()
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert data["names"] == {i: SHAPES[i] for i in range(nc)}
    assert data["synthetic"]["seed"] == 3 and data["synthetic"]["nc"] == nc
    for split, n in (("train", 6), ("val", 3)):
        images, labels = _files(root / "images" / split, "*"), _files(root / "labels" / split, "*.txt")
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
        for img_path, lbl_path in zip(images, labels):
            img = cv2.imread(str(img_path))
            assert img is not None and img.shape == (64, 64, 3)
            rows = _read_labels(lbl_path)
            assert 1 <= len(rows) <= 4, f"{lbl_path} has {len(rows)} objects"
            for row in rows:
                assert len(row) == 5
                assert 0 <= int(row[0]) < nc
                cx, cy, w, h = map(float, row[1:])
                assert all(0 < v <= 1 for v in (cx, cy, w, h)), row
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6  # inside the image
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
                assert all(len(v.split(".")[1]) == 6 for v in row[1:])  # 6 decimals
                assert 0.05 < w < 0.6 and 0.05 < h < 0.6  # roughly 15%-45% of the image, some clipped


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_box_is_tight_and_clipped(shape):
    # the shape sticks out over the right and bottom border: the box must stop at the border and touch the shape
    mask = draw_shape_mask(shape, 64, cx=58.0, cy=55.0, a=12.0, b=14.0)
    cx, cy, w, h = mask_to_box(mask)
    x0, x1 = round((cx - w / 2) * 64), round((cx + w / 2) * 64)
    y0, y1 = round((cy - h / 2) * 64), round((cy + h / 2) * 64)
    assert x1 == 64 and y1 == 64  # every shape reaches past 70 px: clipped at the border
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (x0, x1, y0, y1)  # tight around the drawn pixels
    assert mask_to_box(np.zeros((8, 8), bool)) is None


def test_mask_to_box_exact():
    mask = np.zeros((40, 80), bool)
    mask[10:20, 8:48] = True  # rows 10..19, cols 8..47
    assert mask_to_box(mask) == pytest.approx((28 / 80, 15 / 40, 40 / 80, 10 / 40))


def test_synthetic_deterministic(tmp_path):
    kw = dict(n_train=4, n_val=2, imgsz=64, nc=3)
    a = make_synthetic_dataset(tmp_path / "a", seed=0, **kw).parent
    b = make_synthetic_dataset(tmp_path / "b", seed=0, **kw).parent
    c = make_synthetic_dataset(tmp_path / "c", seed=1, **kw).parent
    da, db, dc = (_set_digest(r) for r in (a, b, c))
    assert len(da) == 12 and da == db  # bit-identical images and labels
    assert da.keys() == dc.keys()
    assert all(da[k] != dc[k] for k in da if k.startswith("train") or k.startswith("val"))  # every image differs


def test_synthetic_reuse_and_regenerate(tmp_path):
    root = tmp_path / "syn"
    yaml_file = make_synthetic_dataset(root, n_train=3, n_val=2, imgsz=32, seed=0)
    first_img = root / "images" / "train" / "train_00000.jpg"
    stamps = (yaml_file.stat().st_mtime_ns, first_img.stat().st_mtime_ns)
    assert make_synthetic_dataset(root, n_train=3, n_val=2, imgsz=32, seed=0) == yaml_file
    assert (yaml_file.stat().st_mtime_ns, first_img.stat().st_mtime_ns) == stamps  # skipped, nothing rewritten

    make_synthetic_dataset(root, n_train=2, n_val=1, imgsz=32, seed=0)  # other parameters: regenerated
    assert len(_files(root / "images" / "train", "*")) == 2 and len(_files(root / "labels" / "train", "*")) == 2
    assert len(_files(root / "images" / "val", "*")) == 1
    assert yaml.safe_load(yaml_file.read_text())["synthetic"]["n_train"] == 2
    assert not list(root.glob(".synthetic-*")) and not (root / "data.yaml.tmp").exists()

    (root / "images" / "train" / "train_00001.jpg").unlink()  # damaged set with matching data.yaml is rebuilt
    make_synthetic_dataset(root, n_train=2, n_val=1, imgsz=32, seed=0)
    assert (root / "images" / "train" / "train_00001.jpg").is_file()


def test_synthetic_refuses_foreign_dataset(tmp_path):
    root = tmp_path / "user"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not made by this tool"):
        make_synthetic_dataset(root, n_train=1, n_val=1, imgsz=32)
    assert (root / "images" / "train" / "mine.jpg").read_bytes() == b"x"


def test_check_det_dataset_accepts_synthetic(tmp_path, no_font_download):
    yaml_file = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, imgsz=32, nc=4)
    data = no_font_download(str(yaml_file))
    assert data["nc"] == 4
    assert data["names"] == {0: "square", 1: "circle", 2: "triangle", 3: "cross"}
    assert Path(data["train"]) == (tmp_path / "syn" / "images" / "train").resolve()
    assert Path(data["val"]).is_dir()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train=0), "n_train=0 .*>= 1.*--n-train"),
        (dict(n_val=0), "n_val=0 .*--n-val"),
        (dict(imgsz=16), "imgsz=16 .*>= 32.*--imgsz"),
        (dict(nc=0), "nc=0 .*between 1 and 8.*--nc"),
        (dict(nc=len(SHAPES) + 1), "nc=9 .*between 1 and 8"),
        (dict(max_objects=0), "max_objects=0"),
        (dict(imgsz=64.0), "imgsz=64.0 .*integer"),
        (dict(clutter=-1), "clutter=-1 .*--clutter"),
        (dict(occlusion=0.9), "occlusion=0.9 .*0 to 0.5.*--occlusion"),
        (dict(small=2), "small=2 .*--small"),
    ],
)
def test_synthetic_bad_args(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        make_synthetic_dataset(tmp_path / "bad", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()  # validated before anything is written


def test_hard_options_make_small_occluded_cluttered_objects(tmp_path):
    """--hard: smaller objects, overlapping objects, more pixels off the plain background; still valid labels."""
    easy = make_synthetic_dataset(tmp_path / "easy", n_train=24, n_val=2, imgsz=128, nc=4, max_objects=6, seed=1)
    hard = make_synthetic_dataset(tmp_path / "hard", n_train=24, n_val=2, imgsz=128, nc=4, max_objects=6, seed=1,
                                  clutter=6, occlusion=0.35, small=0.5)  # fmt: skip
    params = yaml.safe_load(hard.read_text())["synthetic"]
    assert params["clutter"] == 6 and params["occlusion"] == 0.35 and params["small"] == 0.5
    assert "clutter" not in yaml.safe_load(easy.read_text())["synthetic"], "defaults keep the old parameters"

    def boxes(root: Path) -> list[list[float]]:
        return [list(map(float, r[1:])) for f in _files(root / "labels" / "train", "*.txt") for r in _read_labels(f)]

    def overlaps(root: Path) -> int:
        count = 0
        for f in _files(root / "labels" / "train", "*.txt"):
            b = [list(map(float, r[1:])) for r in _read_labels(f)]
            count += sum(abs(p[0] - q[0]) < (p[2] + q[2]) / 2 and abs(p[1] - q[1]) < (p[3] + q[3]) / 2
                         for i, p in enumerate(b) for q in b[i + 1:])  # fmt: skip
        return count

    easy_boxes, hard_boxes = boxes(tmp_path / "easy"), boxes(tmp_path / "hard")
    assert all(0 < w <= 1 and 0 < h <= 1 for _, _, w, h in hard_boxes)
    assert sum(min(w, h) < 0.12 for _, _, w, h in hard_boxes) > sum(min(w, h) < 0.12 for _, _, w, h in easy_boxes)
    assert overlaps(tmp_path / "hard") > overlaps(tmp_path / "easy") + 5, "objects may lie on each other"
    assert _set_digest(tmp_path / "hard") == _set_digest(
        Path(make_synthetic_dataset(tmp_path / "hard2", n_train=24, n_val=2, imgsz=128, nc=4, max_objects=6, seed=1,
                                    clutter=6, occlusion=0.35, small=0.5)).parent  # fmt: skip
    ), "the same options and seed give the same files"


def test_make_dataset_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert make_main(["--out", str(out), "--n-train", "2", "--n-val", "1", "--imgsz", "32", "--nc", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve() / "data.yaml")
    assert make_main(["--out", str(tmp_path / "x"), "--nc", "0"]) == 2


# ----------------------------------------------------------------------------------------------------- VOC -> YOLO
def _voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    """Hand-written VOC XML. objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(
        f"<object><name>{o[0]}</name><pose>Unspecified</pose><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects
    )
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


# name: (width, height, write <size>, objects)
VOC_SAMPLES = {
    "img0": (100, 50, True, [("cat", 11, 6, 60, 30)]),
    "img1": (80, 60, True, [("dog", 1, 1, 80, 60), ("cat", 50, 40, 95, 70)]),  # 2nd box sticks out: clipped
    "img2": (64, 64, True, [("horse", 5, 5, 20, 20), ("dog", 10, 10, 30, 40, 1)]),  # unknown class, difficult
    "img3": (90, 40, True, []),  # background image
    "img4": (40, 80, False, [("cat", 1, 41, 40, 80)]),  # no <size>: read from the image
}


def _make_voc(root: Path, flat: bool = False) -> Path:
    ann, jpg = (root, root) if flat else (root / "Annotations", root / "JPEGImages")
    ann.mkdir(parents=True, exist_ok=True)
    jpg.mkdir(parents=True, exist_ok=True)
    for i, (name, (w, h, with_size, objects)) in enumerate(VOC_SAMPLES.items()):
        cv2.imwrite(str(jpg / f"{name}.jpg"), np.full((h, w, 3), 40 * i, np.uint8))
        (ann / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", (w, h) if with_size else None, objects))
    return root


def _labels_by_stem(out: Path) -> dict[str, list[list[str]]]:
    return {p.stem: _read_labels(p) for p in _files(out / "labels", "*/*.txt")}


def test_voc_box_math_exact():
    # 1-based inclusive VOC pixels: edges are xmin-1 .. xmax, so x 10..60 of 100 and y 5..30 of 50
    assert voc_box_to_yolo((11, 6, 60, 30), 100, 50) == pytest.approx((0.35, 0.35, 0.5, 0.5))
    assert voc_box_to_yolo((1, 1, 100, 50), 100, 50) == pytest.approx((0.5, 0.5, 1.0, 1.0))  # full image
    assert voc_box_to_yolo((-9, 41, 120, 70), 100, 50) == pytest.approx((0.5, 0.9, 1.0, 0.2))  # clipped
    assert voc_box_to_yolo((120, 5, 130, 20), 100, 50) is None  # entirely outside


def test_voc_convert(tmp_path, no_font_download):
    voc = _make_voc(tmp_path / "voc")
    yaml_file = convert_voc(voc, tmp_path / "out", val_ratio=0.4, seed=0)
    out = tmp_path / "out"
    assert yaml_file == out.resolve() / "data.yaml"
    data = yaml.safe_load(yaml_file.read_text())
    assert data["names"] == {0: "cat", 1: "dog", 2: "horse"}  # sorted set of all names found
    assert data["path"] == str(out.resolve()) and data["val"] == "images/val"

    labels = _labels_by_stem(out)
    assert labels["img0"] == [["0", "0.350000", "0.350000", "0.500000", "0.500000"]]
    assert labels["img1"] == [
        ["1", "0.500000", "0.500000", "1.000000", "1.000000"],
        ["0", "0.806250", "0.825000", "0.387500", "0.350000"],  # edges x 49..80, y 39..60 after clipping
    ]
    assert labels["img2"] == [["2", "0.187500", "0.187500", "0.250000", "0.250000"], ["1"] + labels["img2"][1][1:]]
    assert labels["img3"] == []  # background image: empty label file
    assert labels["img4"] == [["0", "0.500000", "0.750000", "1.000000", "0.500000"]]  # size read from the image

    # split sizes: round(5 * 0.4) = 2 val, 3 train; images and labels pair up; images copied byte for byte
    for split, n in (("train", 3), ("val", 2)):
        imgs, lbls = _files(out / "images" / split, "*"), _files(out / "labels" / split, "*.txt")
        assert len(imgs) == len(lbls) == n and [p.stem for p in imgs] == [p.stem for p in lbls]
        for p in imgs:
            assert p.read_bytes() == (voc / "JPEGImages" / p.name).read_bytes()
    assert set(labels) == set(VOC_SAMPLES)

    checked = no_font_download(str(yaml_file))
    assert checked["nc"] == 3 and checked["names"] == {0: "cat", 1: "dog", 2: "horse"}


def test_voc_split_deterministic_and_nonempty(tmp_path):
    voc = _make_voc(tmp_path / "voc")

    def val_stems(out: str, **kw) -> set[str]:
        convert_voc(voc, tmp_path / out, **kw)
        return {p.stem for p in _files(tmp_path / out / "images" / "val", "*")}

    assert val_stems("a", val_ratio=0.4, seed=7) == val_stems("b", val_ratio=0.4, seed=7)
    assert len({frozenset(split_indices(5, 0.4, s)[1]) for s in range(10)}) > 1  # the seed changes the split
    assert len(val_stems("tiny", val_ratio=0.01)) == 1  # at least one val image
    assert len(_files(tmp_path / "tiny" / "images" / "train", "*")) == 4
    assert split_indices(2, 0.9, 0) == ([0], [1]) or split_indices(2, 0.9, 0) == ([1], [0])  # at least one train
    assert split_indices(10, 0.0, 0) == (list(range(10)), [])


def test_voc_val_ratio_zero_uses_train(tmp_path):
    yaml_file = convert_voc(_make_voc(tmp_path / "voc"), tmp_path / "out", val_ratio=0.0)
    assert yaml.safe_load(yaml_file.read_text())["val"] == "images/train"
    assert len(_files(tmp_path / "out" / "images" / "train", "*")) == 5


def test_voc_unknown_classes_skipped_with_one_warning(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(voc2yolo.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    voc = _make_voc(tmp_path / "voc")
    yaml_file = convert_voc(voc, tmp_path / "out", classes=["dog", "cat"], skip_difficult=True)
    assert yaml.safe_load(yaml_file.read_text())["names"] == {0: "dog", 1: "cat"}
    labels = _labels_by_stem(tmp_path / "out")
    assert labels["img0"] == [["1", "0.350000", "0.350000", "0.500000", "0.500000"]]  # ids follow the given order
    assert labels["img2"] == []  # horse is unknown, the dog is difficult and skipped
    assert len(warnings) == 1 and "horse" in warnings[0] and "1 object" in warnings[0]


def test_voc_flat_layout(tmp_path):
    voc = _make_voc(tmp_path / "flat", flat=True)
    yaml_file = convert_voc(voc, tmp_path / "out", val_ratio=0.2)
    assert len(_files(tmp_path / "out" / "images", "*/*")) == 5
    assert _labels_by_stem(yaml_file.parent)["img0"] == [["0", "0.350000", "0.350000", "0.500000", "0.500000"]]


def test_voc_corrupt_xml_names_file_and_leaves_nothing(tmp_path):
    voc = _make_voc(tmp_path / "voc")
    bad = voc / "Annotations" / "img2.xml"
    bad.write_text("<annotation><filename>img2.jpg</filename><object><name>cat</name>")  # truncated
    before = _tree_digest(voc)
    with pytest.raises(ValueError, match=r"corrupt XML annotation .*img2\.xml") as e:
        convert_voc(voc, tmp_path / "out" / "voc_yolo")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # all XMLs are checked before writing anything
    assert _tree_digest(voc) == before


def test_voc_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    voc = _make_voc(tmp_path / "voc")
    calls, real_copy = [], shutil.copyfile

    def flaky_copy(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(voc2yolo.shutil, "copyfile", flaky_copy)
    with pytest.raises(OSError, match="disk full"):
        convert_voc(voc, tmp_path / "out" / "voc_yolo")
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor the temp folder is left


def test_voc_inputs_untouched(tmp_path):
    voc = _make_voc(tmp_path / "voc")
    before = _tree_digest(voc)
    convert_voc(voc, tmp_path / "out", val_ratio=0.4)
    assert _tree_digest(voc) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "voc"]  # no temp folder left behind


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_voc(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .xml annotation files"):
        convert_voc(tmp_path / "empty", tmp_path / "out")
    voc = _make_voc(tmp_path / "voc")
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"val_ratio=.* \[0, 1\)"):
            convert_voc(voc, tmp_path / "out", val_ratio=ratio)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_voc(voc, tmp_path / "taken")
    assert not (tmp_path / "out").exists()


def test_voc2yolo_cli(tmp_path, capsys):
    voc = _make_voc(tmp_path / "voc")
    out = tmp_path / "cli"
    assert voc2yolo.main([str(voc), "--out", str(out), "--val-ratio", "0.2", "--classes", "cat,dog"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve() / "data.yaml")
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "cat", 1: "dog"}
    assert voc2yolo.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


# tools/benchmark.py: the continue control, vs_continue, the convergence check, seeds ----------------------------------
def _parent(root: Path, data: Path, curve: list[float] | None) -> Path:
    """An untrained yolov8n saved as `<root>/weights/best.pt`, with a fake results.csv of mAP50-95 `curve` beside."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from ultralytics_prune.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), root / "weights" / "best.pt",
                           train_args={"data": str(data), "imgsz": 64, "task": "detect"})  # fmt: skip
    if curve is not None:
        lines = ["epoch,metrics/mAP50(B),metrics/mAP50-95(B)"]
        lines += [f"{i + 1},{min(1.0, v + 0.2):.5f},{v:.5f}" for i, v in enumerate(curve)]
        (root / "results.csv").write_text("\n".join(lines) + "\n")
    return ckpt


def test_benchmark_continue_row_and_convergence_check(synthetic_data, tmp_path):
    """base,continue,prune: the continue row is the parent trained without a cut, vs_continue reads every row against
    it, and a parent still rising over its last 20 % of epochs is called out on top of the table."""
    from tools.benchmark import COLUMNS, CONVERGENCE_RISE
    from tools.benchmark import main as benchmark_main

    from ultralytics_prune.files import read_csv

    rising = [0.1 + 0.01 * i for i in range(10)]  # epochs 9-10 best 0.19, epochs 1-8 best 0.17: +2 points
    parent = _parent(tmp_path / "rising", synthetic_data, rising)
    out = tmp_path / "bench"
    code = benchmark_main(["--data", str(synthetic_data), "--model", str(parent), "--imgsz", "64", "--epochs", "1",
                           "--steps", "1", "--rate", "0.5", "--rows", "base,continue,prune",
                           "--latency-repeats", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    with open(out / "benchmark.csv") as f:
        assert f.readline().strip().split(",") == list(COLUMNS)
    base, cont, pruned = read_csv(out / "benchmark.csv")
    assert [base["row"], cont["row"], pruned["row"]] == ["base", "continue", "prune"]
    assert cont["train_epochs"] == pruned["train_epochs"] == 1 and cont["error"] == pruned["error"] == ""
    assert cont["params_M"] == base["params_M"] and cont["macs_G"] == base["macs_G"], "continue cuts nothing"
    assert pruned["params_M"] < 0.8 * base["params_M"]
    assert cont["vs_continue"] == 0
    for r in (base, pruned):
        assert r["vs_continue"] == pytest.approx(r["task_mAP50-95"] - cont["task_mAP50-95"], abs=2e-6)
    steps = read_csv(out / "continue" / "continue_results.csv")  # the pruning loop's own run, with nothing removed
    assert [s["step"] for s in steps] == [0, 1] and all(s["removed"] == 0 for s in steps)
    assert steps[1]["params_M"] == steps[0]["params_M"]
    assert (out / "continue" / "step1" / "results.csv").is_file(), "fine-tuned by the loop's trainer"
    for row, run in ((cont, "continue"), (pruned, "prune")):  # the fine-tune's fall below what it was given
        step = read_csv(out / run / f"{run}_results.csv")[1]
        assert row["first_epoch"] == step["mAP50-95_first"] and row["shock"] == step["shock"], (row, step)
        assert step["shock"] == pytest.approx(step["mAP50-95_lowest"] - step["mAP50-95_pre"], abs=2e-6)
    assert base["first_epoch"] == base["shock"] == "", "the base row was not fine-tuned"

    report = json.loads((out / "benchmark.json").read_text())
    verdict = report["convergence"]
    assert verdict["converged"] is False and verdict["column"] == "metrics/mAP50-95(B)"
    assert verdict["tail_epochs"] == 2 and verdict["rise"] == pytest.approx(0.02) and 0.02 > CONVERGENCE_RISE
    assert [(r["row"], r["seed"]) for r in report["runs"]] == [("base", None), ("continue", 0), ("prune", 0)]
    md = (out / "benchmark.md").read_text()
    assert md.splitlines()[0] == verdict["message"] and "NOT converged" in md.splitlines()[0]
    assert "| row | seeds |" in md and "| continue | 1 |" in md


def test_benchmark_flat_parent_no_continue_row_and_int8(synthetic_data, tmp_path):
    """A parent flat over its last 20 % of epochs is converged; without a continue row vs_continue stays empty;
    `--int8` adds the row's INT8 twin, validated from its quantized ONNX and timed."""
    import onnx
    from tools.benchmark import main as benchmark_main

    from ultralytics_prune.files import read_csv

    flat = [0.1 + 0.01 * i for i in range(8)] + [0.175, 0.172]  # last 2 best 0.175, before 0.17: +0.5 points
    parent = _parent(tmp_path / "flat", synthetic_data, flat)
    out = tmp_path / "bench"
    assert benchmark_main(["--data", str(synthetic_data), "--model", str(parent), "--imgsz", "64", "--rows", "base",
                           "--int8", "--latency-repeats", "1", "--out", str(out)]) == 0  # fmt: skip
    base, int8 = read_csv(out / "benchmark.csv")
    assert base["vs_continue"] == "" and base["error"] == ""
    assert int8["row"] == "base-int8" and int8["error"] == "" and int8["macs_G"] == base["macs_G"]
    assert isinstance(int8["vs_float"], float) and -1 <= int8["vs_float"] <= 1 and base["vs_float"] == ""
    assert int8["onnx_ms"] > 0 and int8["speedup"] > 0
    (run,) = [r for r in json.loads((out / "benchmark.json").read_text())["runs"] if r["row"] == "base-int8"]
    ops = {n.op_type for n in onnx.load(run["onnx"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    verdict = json.loads((out / "benchmark.json").read_text())["convergence"]
    assert verdict["converged"] is True and verdict["rise"] == pytest.approx(0.005)
    first = (out / "benchmark.md").read_text().splitlines()[0]
    assert first.startswith("parent converged") and "NOT" not in first


def test_benchmark_convergence_unknown_without_results_csv(tmp_path):
    from tools.benchmark import parent_convergence

    (tmp_path / "weights").mkdir()
    verdict = parent_convergence(tmp_path / "weights" / "best.pt")
    assert verdict["converged"] is None and "no results.csv" in verdict["message"]
    assert verdict["results_csv"] == str((tmp_path / "results.csv").resolve())


def test_benchmark_seeds_mean_spread_and_paired_vs_continue():
    """Every seed's row is read against the same seed's continue row; the table gives mean and max - min spread."""
    from tools.benchmark import METRIC, SPREAD, add_vs_continue, summarize

    runs = [{"row": "base", "seed": None, "train_epochs": 0, "error": "", METRIC: 0.50}]
    for seed, (cont, pruned) in enumerate([(0.52, 0.50), (0.56, 0.51), (0.54, 0.0)]):
        runs.append({"row": "continue", "seed": seed, "train_epochs": 4, "error": "", METRIC: cont})
        error = "RuntimeError: boom" if seed == 2 else ""
        measured = {} if error else {METRIC: pruned}
        runs.append({"row": "prune", "seed": seed, "train_epochs": 4, "error": error, **measured})
    add_vs_continue(runs)
    assert [round(r.get("vs_continue", -1), 6) for r in runs] == [-0.04, 0, -0.02, 0, -0.05, 0, -1]
    base, cont, pruned = summarize(runs)
    assert SPREAD == (METRIC, "vs_continue")
    assert base["seeds"] == 1 and base[f"{METRIC}_spread"] == 0 and base["vs_continue"] == pytest.approx(-0.04)
    assert cont["seeds"] == 3 and cont[METRIC] == pytest.approx(0.54)
    assert cont[f"{METRIC}_spread"] == pytest.approx(0.04)
    assert pruned["seeds"] == 2 and pruned[METRIC] == pytest.approx(0.505)
    assert pruned["vs_continue"] == pytest.approx(-0.035) and pruned["vs_continue_spread"] == pytest.approx(0.03)
    assert pruned["error"] == "seed 2: RuntimeError: boom"


@pytest.mark.parametrize("bad, message", [(["--seeds", "0"], "--seeds 0: give at least 1"),
                                          (["--rows", "base,cont"], "--rows: unknown rows ['cont'], choose from")])
def test_benchmark_bad_options_one_line(bad, message, capsys):
    from tools.benchmark import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data", "d.yaml", "--model", "m.pt", *bad])
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_gpu_check_without_cuda_is_one_line_and_exit_2(tmp_path):
    from tools.gpu_check import NO_CUDA

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tools/gpu_check.py runs for real here")
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout.strip() == NO_CUDA and not done.stderr.strip(), done
    assert not out.exists()


def test_onnx_latencies_alternate_the_order_and_pool_every_call(monkeypatch):
    """Repeats time all files again in reversed order every other time; each file's median is over all its calls."""
    import ultralytics_prune.measure.latency as latency

    orders = []

    def fake_time_alone(files, imgsz, threads, rounds, warmup):
        orders.append(list(files))
        return [[{"a": 1.0, "b": 3.0}[f]] * rounds if len(orders) < 3 else [9.0] for f in files]  # a slow 3rd call

    monkeypatch.setattr(latency, "time_alone", fake_time_alone)
    assert latency.onnx_latencies(["a", "b"], 64, rounds=2, repeats=3) == [1.0, 3.0]
    assert orders == [["a", "b"], ["b", "a"], ["a", "b"]]


def latency_rows(times: dict[str, tuple[float, list[float]]], backend: str = "onnxruntime-cpu-2threads") -> list[dict]:
    """bench_latency.py's rows for models given as name -> (GMACs, per-repeat median ms)."""
    return [{"backend": backend, "model": name, "macs_G": macs, "repeat_medians_ms": " ".join(map(str, ms))}
            for name, (macs, ms) in times.items()]  # fmt: skip


def test_latency_floor_splits_the_fixed_part_from_the_widths(tmp_path, capsys):
    """On exact lines (fixed 2 ms, 10 ms per GMAC; a second repeat 3 ms + 12 ms per GMAC) the fixed part and the cap
    come back exactly, and a model 25 % slower than a uniform cut of its MACs reads 0.8 against the line."""
    from tools.latency_floor import main as floor_main

    line = {"0:parent": 1.0, "1:r25": 0.6, "2:r50": 0.3}
    times = {name: (m, [2 + 10 * m, 3 + 12 * m]) for name, m in line.items()}
    times["3:pruned"] = (0.5, [(2 + 10 * 0.5) * 1.25, (3 + 12 * 0.5) * 1.25])
    source = tmp_path / "latency.json"
    source.write_text(json.dumps({"args": {}, "rows": latency_rows(times)}))
    assert floor_main([str(source), "--line", "0,1,2"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "floor.json").read_text())["rows"]}
    pruned = rows["3:pruned"]
    assert pruned["fixed_ms"] == pytest.approx(2.5)  # the median of the two repeats' 2 and 3
    caps = [12 / (2 + 10 / 2) / 2, 15 / (3 + 12 / 2) / 2]  # the parent's time over the line's at half the MACs
    assert pruned["cap"] == pytest.approx(float(np.median(caps)))
    assert pruned["vs_line"] == pytest.approx(0.8) and pruned["vs_line_low"] == pytest.approx(0.8)
    assert pruned["realization"] == pytest.approx(float(np.median(caps)) * 0.8)
    assert all(rows[name]["vs_line"] == pytest.approx(1.0) for name in line)
    assert "| onnxruntime-cpu-2threads | 3:pruned |" in capsys.readouterr().out


@pytest.mark.parametrize("line", ["", "0", "1,2", "0,9", "0,x"])
def test_latency_floor_bad_line_is_one_line(line, tmp_path, capsys):
    from tools.latency_floor import main as floor_main

    source = tmp_path / "latency.json"
    source.write_text(json.dumps({"rows": latency_rows({"0:a": (1.0, [3.0]), "1:b": (0.5, [2.0])})}))
    assert floor_main([str(source), "--line", line]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--line needs the parent (0)" in err and not (tmp_path / "floor.json").exists()
    assert floor_main([str(tmp_path / "missing.json"), "--line", "0,1"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["not json", '{"rows": [{"model": "0:a"}]}', '{"table": []}'])
def test_latency_floor_foreign_file_is_one_line(content, tmp_path, capsys):
    from tools.latency_floor import main as floor_main

    source = tmp_path / "latency.json"
    source.write_text(content)
    assert floor_main([str(source), "--line", "0,1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a latency.json of tools/bench_latency.py" in err
    assert source.read_text() == content and not (tmp_path / "floor.json").exists()


def test_latency_floor_refuses_an_onnx_file_on_the_line(tmp_path, capsys):
    """An .onnx file given to bench_latency.py has no MACs (NaN): it cannot be a point of the line."""
    from tools.latency_floor import main as floor_main

    rows = latency_rows({"0:a": (1.0, [3.0]), "1:b_int8": (float("nan"), [2.0]), "2:c": (0.5, [2.0])})
    source = tmp_path / "latency.json"
    source.write_text(json.dumps({"rows": rows}))
    assert floor_main([str(source), "--line", "0,1"]) == 2
    assert "--line needs the parent (0)" in capsys.readouterr().err
    assert floor_main([str(source), "--line", "0,2"]) == 0, "off the line a model without MACs is only not read"


def test_restart_grid_recipes_change_one_thing_from_the_parents_training():
    from tools.restart_grid import NO_WARMUP, recipes

    table = recipes("AdamW", 0.001, 0.01, epochs=10)
    continuation = table["parent_10x_final"]
    assert continuation["optimizer"] == "AdamW" and continuation["lr0"] == pytest.approx(1e-4)
    assert continuation["lr0"] * continuation["lrf"] == pytest.approx(1e-5), "it ends where the parent ended"
    assert table["parent_final"]["lr0"] == pytest.approx(1e-5) and table["parent_lr0"]["lr0"] == 0.001
    assert table["parent_10x_final_mosaic"]["close_mosaic"] == 0 and continuation["close_mosaic"] == 10
    assert all(table[n].items() >= NO_WARMUP.items() for n in ("sgd_0.01", "parent_lr0", "parent_final"))
