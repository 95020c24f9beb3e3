"""Tests for the `yolo` command of ultralytics-prune: our modes and keys, readable errors, Ultralytics' commands."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import ultralytics
import yaml
from ultralytics.utils import LOGGER

from ultralytics_prune import UserError, YOLOPrune
from ultralytics_prune.cli import entrypoint, parse_cli_args

ERROR_PREFIX = "ERROR "


def console_script(name: str) -> str | None:
    """Path of an installed console script, preferring the one next to this interpreter."""
    here = Path(sys.executable).with_name(name)
    return str(here) if here.is_file() else shutil.which(name)


def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run an installed console script; Ultralytics may not pip-install anything (the attempt is logged instead)."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    env.pop("YOLO_PRUNE_DEBUG", None)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def no_autoinstall(out: str) -> None:
    """Fail with the log when Ultralytics found a requirement missing and wanted to install it."""
    assert "AutoUpdate" not in out and "pip install" not in out, f"Ultralytics tried to install a requirement:\n{out}"


class Records(logging.Handler):
    """Collects the lines Ultralytics' LOGGER logs, independent of pytest's capture plugins.

    Warnings and errors start with their level name ('ERROR ...'), as Ultralytics prints them.
    """

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"{record.levelname} " if record.levelno >= logging.WARNING else ""
        self.lines.extend(f"{prefix}{line}" for line in record.getMessage().splitlines() or [""])


def cli(command: str) -> tuple[int | None, str]:
    """Run `entrypoint(command)` in process; return (exit code or None, the lines it logged).

    The collecting handler goes first: Ultralytics' formatter rewrites `record.msg` with its level prefix, so a
    handler after it would see the prefix added again. A traceback would propagate out of this call.
    """
    records = Records()
    LOGGER.handlers.insert(0, records)
    code = None
    try:
        entrypoint(command)
    except SystemExit as e:
        code = e.code
    finally:
        LOGGER.removeHandler(records)
    return code, "\n".join(records.lines)


def assert_one_error_line(code, out: str, *fragments: str) -> str:
    """Exit code 2, exactly one printed line, an error naming every fragment, no traceback."""
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one error line, got:\n{out}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for f in fragments:
        assert f in lines[0], f"{f!r} missing from {lines[0]!r}"
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------------
# readable errors, exit code 2, nothing written


@pytest.mark.parametrize(
    "arg, fragments",
    [
        ("sr=abc", ("'sr=abc'", "invalid type", "Valid 'sr'")),
        ("sr=-1", ("'sr=-1'", "invalid value", "Valid 'sr'")),
        ("srr=0.1", ("'srr'", "not a valid YOLO argument", "sr=0.0")),
        ("sr_decay=2", ("'sr_decay=2'", "invalid value")),
    ],
)
def test_train_bad_key_is_one_error_line(synthetic_data, tmp_path, arg, fragments):
    project = tmp_path / "project"
    code, out = cli(f"yolo train model=yolov8n.yaml data={synthetic_data} {arg} project={project} name=bad")
    assert_one_error_line(code, out, *fragments)
    assert not project.exists(), "no run folder may be created for a rejected command"


def test_train_without_data(tmp_path):
    project = tmp_path / "project"
    code, out = cli(f"yolo train model=yolov8n.yaml sr=0.1 project={project}")
    assert_one_error_line(code, out, "'data'")
    assert not project.exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        ("model={tmp}/missing.pt data={data}", ("missing.pt", "not found")),
        ("model=yolov8n.yaml data={tmp}/none.yaml", ("none.yaml", "cannot be used")),
        ("model=yolov8n.yaml data={data} device=7", ("'device=7'",)),
    ],
)
def test_train_bad_input_fails_before_the_run_folder(synthetic_data, tmp_path, args, fragments):
    project = tmp_path / "project"
    args = args.format(tmp=tmp_path, data=synthetic_data)
    code, out = cli(f"yolo train {args} epochs=1 imgsz=64 project={project} name=bad")
    assert_one_error_line(code, out, *fragments)
    assert not project.exists(), "no run folder may be created for a run that cannot start"


def test_prune_rate_out_of_range(synthetic_data, tmp_path):
    project = tmp_path / "project"
    code, out = cli(f"yolo prune model=yolov8n.yaml data={synthetic_data} rate=1.5 project={project}")
    assert_one_error_line(code, out, "'rate=1.5'", "0 <= rate < 1")
    assert not project.exists()


@pytest.mark.parametrize("mode", ["prune", "slim"])
def test_prune_and_slim_need_model(synthetic_data, mode):
    code, out = cli(f"yolo {mode} data={synthetic_data} rate=0.5")
    assert_one_error_line(code, out, "'model'")


def test_debug_env_raises(monkeypatch, synthetic_data):
    """YOLO_PRUNE_DEBUG=1 shows the real exception instead of the one-line message."""
    monkeypatch.setenv("YOLO_PRUNE_DEBUG", "1")
    with pytest.raises(UserError, match="sr=abc"):
        entrypoint(f"yolo train model=yolov8n.yaml data={synthetic_data} sr=abc")


# ---------------------------------------------------------------------------------------------------------------------
# cfg=file.yaml


def test_cfg_file_bad_value_is_the_same_error(synthetic_data, tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("sr: abc\nepochs: 1\n")
    project = tmp_path / "project"
    code, out = cli(f"yolo train model=yolov8n.yaml data={synthetic_data} cfg={cfg} project={project}")
    # the Overriding... line is logged at info level before the check; the error line is the same as on the CLI
    errors = [line for line in out.splitlines() if line.startswith(ERROR_PREFIX)]
    assert code == 2, out
    assert len(errors) == 1 and "'sr=abc'" in errors[0] and "invalid type" in errors[0], out
    assert not project.exists()


def test_cfg_file_unknown_key(synthetic_data, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("srr: 0.1\n")
    code, out = cli(f"yolo train model=yolov8n.yaml data={synthetic_data} cfg={cfg}")
    errors = [line for line in out.splitlines() if line.startswith(ERROR_PREFIX)]
    assert code == 2, out
    assert len(errors) == 1 and "'srr'" in errors[0] and "sr=0.0" in errors[0], out


def test_cfg_file_mode_is_routed_to_us(synthetic_data, tmp_path):
    """Ultralytics runs `yolo cfg=f.yaml` with the mode taken from the file; ours must do the same for our keys."""
    cfg = tmp_path / "mode.yaml"
    cfg.write_text(yaml.safe_dump({"mode": "train", "model": "yolov8n.yaml", "data": str(synthetic_data), "sr": "abc"}))
    code, out = cli(f"yolo cfg={cfg}")
    errors = [line for line in out.splitlines() if line.startswith(ERROR_PREFIX)]
    assert code == 2, out
    assert len(errors) == 1 and "'sr=abc'" in errors[0], out


def test_cfg_file_merges_under_cli_keys(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 7, "sr": 0.01, "imgsz": 96, "rate": 0.3, "cfg": "ignored.yaml"}))
    from_file = {"mode": "train", "epochs": 7, "sr": 0.01, "imgsz": 96, "rate": 0.3}
    assert parse_cli_args(["train", f"cfg={cfg}"]) == from_file
    # keys given on the command line win, before or after cfg=
    for args in (["train", "epochs=3", "sr=0.5", f"cfg={cfg}"], ["train", f"cfg={cfg}", "epochs=3", "sr=0.5"]):
        got = parse_cli_args(args)
        assert got == {"mode": "train", "epochs": 3, "sr": 0.5, "imgsz": 96, "rate": 0.3}, args


def test_parse_cli_args_forms():
    got = parse_cli_args(["detect", "prune", "--rate=0.25", "global_pruning", "hold=22,model.9", "round_to", "=", "4"])
    expected = {"task": "detect", "mode": "prune", "rate": 0.25, "global_pruning": True, "hold": "22,model.9"}
    assert got == {**expected, "round_to": 4}
    with pytest.raises(UserError, match="'rate' is missing an '=' sign"):
        parse_cli_args(["prune", "rate"])
    with pytest.raises(UserError, match="'rate=' has no value"):
        parse_cli_args(["prune", "rate="])
    with pytest.raises(UserError, match="'raet' is not a valid YOLO argument"):
        parse_cli_args(["prune", "raet=0.5"])


# ---------------------------------------------------------------------------------------------------------------------
# help and cfg


def test_help_lists_our_modes_and_keys():
    code, out = cli("yolo help")
    assert code in (None, 0), out
    assert "yolo TASK MODE ARGS" in out, "Ultralytics' own help comes first"
    assert "yolo prune" in out and "yolo slim" in out
    keys_line = next(line for line in out.splitlines() if line.strip().startswith("Keys:"))
    keys = {k.strip() for k in keys_line.split(":", 1)[1].split(",")}
    assert {"sr", "sr_decay", "rate", "round_to", "iterative_steps", "importance", "threshold"} <= keys
    assert "epochs" not in keys, "only our keys are listed there"


def test_cfg_prints_both_defaults():
    code, out = cli("yolo cfg")
    assert code in (None, 0), out
    lines = out.splitlines()
    assert any(line.startswith("epochs:") for line in lines), "Ultralytics' default.yaml"
    assert any(line.startswith("sr: 0.0") for line in lines), "our default.yaml"
    assert any(line.startswith("rate: 0.5") for line in lines)


# ---------------------------------------------------------------------------------------------------------------------
# the installed console scripts; Ultralytics' own commands still work through them


@pytest.fixture(scope="module")
def yolo_script() -> str:
    path = console_script("yolo")
    assert path is not None, "the 'yolo' console script is not installed (pip install -e .)"
    return path


@pytest.mark.parametrize("name", ["yolo", "yolo-prune"])
def test_console_script_is_ours_and_passes_version_through(name):
    path = console_script(name)
    assert path is not None, f"the {name!r} console script is not installed (pip install -e .)"
    p = run_script(path, "version")
    assert p.returncode == 0, p.stdout + p.stderr
    assert ultralytics.__version__ in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    text = Path(path).read_text(errors="replace") if Path(path).stat().st_size < 100_000 else ""
    if "ultralytics" in text:  # a pip-generated script names its entrypoint (a pyenv shim does not)
        assert "ultralytics_prune.cli" in text, f"{path} is not the ultralytics-prune entrypoint"


def test_console_script_help(yolo_script):
    p = run_script(yolo_script, "help")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "yolo slim" in out and "yolo prune" in out and "sr_decay" in out


def test_console_script_error_exit_code(yolo_script, synthetic_data, tmp_path):
    project = tmp_path / "project"
    p = run_script(yolo_script, "train", "model=yolov8n.yaml", f"data={synthetic_data}", "sr=abc", f"project={project}")
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "'sr=abc'" in lines[0] and "Traceback" not in out, out
    assert not project.exists()


@pytest.fixture(scope="module")
def cli_checkpoint(synthetic_data, runs_dir) -> Path:
    """last.pt of a 1-epoch sparsity training at imgsz=64 started through our `yolo train`."""
    name = "cli_train"
    entrypoint(
        f"yolo train model=yolov8n.yaml data={synthetic_data} epochs=1 imgsz=64 batch=8 workers=0 sr=0.001 "
        f"optimizer=auto val=False plots=False project={runs_dir} name={name} exist_ok=True"
    )
    last = runs_dir / name / "weights" / "last.pt"
    assert last.is_file()
    return last


def test_cli_train_runs_sparsity_trainer(cli_checkpoint):
    run = cli_checkpoint.parents[1]
    with open(run / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert {"gamma/lt1e-2", "gamma/median"} <= {k.strip() for k in rows[0]}, "the CLI must train with SparsityTrainer"
    ckpt = torch.load(cli_checkpoint, map_location="cpu", weights_only=False)
    args = ckpt["model"].args  # Ultralytics strips non-default keys from the final ckpt["train_args"]
    assert args["sr"] == 0.001
    assert args["optimizer"] == "SGD", "optimizer=auto with sr>0 switches to SGD"


def test_val_through_our_yolo(yolo_script, cli_checkpoint, synthetic_data, tmp_path):
    args = [f"model={cli_checkpoint}", f"data={synthetic_data}", "imgsz=64", "batch=8", "workers=0", "plots=False"]
    p = run_script(yolo_script, "val", *args, f"project={tmp_path}", "name=val")
    out = p.stdout + p.stderr
    no_autoinstall(out)
    assert p.returncode == 0, out
    assert "Traceback" not in out, out
    assert "mAP50-95" in out, out
    summary = ["all", "8", str(_n_val_instances(synthetic_data))]  # class, images, instances
    assert any(line.split()[:3] == summary for line in out.splitlines()), out


def _n_val_instances(data_yaml: Path) -> int:
    root = Path(yaml.safe_load(data_yaml.read_text())["path"])
    return sum(len(f.read_text().splitlines()) for f in (root / "labels" / "val").glob("*.txt"))


def test_predict_through_our_yolo(yolo_script, cli_checkpoint, synthetic_data, tmp_path):
    root = Path(yaml.safe_load(synthetic_data.read_text())["path"])
    image = sorted((root / "images" / "val").glob("*.jpg"))[0]
    args = [f"model={cli_checkpoint}", f"source={image}", "imgsz=64", "save=False"]
    p = run_script(yolo_script, "predict", *args, f"project={tmp_path}", "name=predict")
    out = p.stdout + p.stderr
    no_autoinstall(out)
    assert p.returncode == 0, out
    assert "Traceback" not in out, out
    assert f"image 1/1 {image}: 64x64" in out, out
    assert "Speed:" in out


def test_export_onnx_through_our_yolo(yolo_script, cli_checkpoint, tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = tmp_path / "cli.pt"
    shutil.copy(cli_checkpoint, model)  # export writes next to the weights; keep the shared run folder clean
    p = run_script(yolo_script, "export", f"model={model}", "format=onnx", "imgsz=64")
    out = p.stdout + p.stderr
    no_autoinstall(out)
    assert p.returncode == 0, out
    assert "Traceback" not in out, out
    assert "export success" in out, out
    onnx_file = model.with_suffix(".onnx")
    assert onnx_file.is_file(), out
    onnx.checker.check_model(str(onnx_file))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert list(inp.shape) == [1, 3, 64, 64]
    (pred,) = session.run(None, {inp.name: np.zeros((1, 3, 64, 64), np.float32)})
    assert pred.shape == (1, 4 + 3, 84), "boxes + 3 classes over 8x8 + 4x4 + 2x2 anchors"


@pytest.mark.parametrize("content, says", [
    ("from ultralytics.cfg import entrypoint\nentrypoint()\n", "is Ultralytics' own 'yolo' again"),
    (None, "there is no 'yolo' command beside 'yolo-prune'"),
    ("from ultralytics_prune.cli import entrypoint\nentrypoint()\n", None),
])  # fmt: skip
def test_yolo_prune_says_when_yolo_is_not_ours(tmp_path, content, says):
    """`pip install -U ultralytics` rewrites `yolo`; `yolo-prune` (always ours) says so in one line, and what to run."""
    if content is not None:
        (tmp_path / "yolo").write_text(f"#!/usr/bin/env python\n{content}")
    _, out = cli(f"{tmp_path / 'yolo-prune'} help")
    notices = [line for line in out.splitlines() if line.startswith("WARNING")]
    if says is None:
        assert not notices, notices
    else:
        assert len(notices) == 1 and says in notices[0] and "yolo-prune" in notices[0], notices


# ---------------------------------------------------------------------------------------------------------------------
# trainings that do not need us are Ultralytics' own


def folder_classes(root: Path) -> Path:
    """A tiny image-folder classification set: dark and bright 32 px images, 4 of each per split."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, level in (("dark", 40), ("bright", 200)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                cv2.imwrite(str(folder / f"{i}.png"), np.uint8(level + rng.integers(0, 30, (32, 32, 3))))
    return root


def test_classify_train_goes_to_ultralytics(tmp_path):
    data = folder_classes(tmp_path / "cls")
    code, out = cli(f"yolo classify train model=yolov8n-cls.yaml data={data} epochs=1 imgsz=32 batch=4 workers=0 "
                    f"plots=False project={tmp_path / 'runs'} name=cls")  # fmt: skip
    assert code is None, out
    with open(tmp_path / "runs" / "cls" / "results.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert "metrics/accuracy_top1" in header and not any(k.startswith("gamma/") for k in header)


def test_our_key_on_classify_is_one_line(tmp_path):
    with pytest.raises(UserError, match="sr cannot be used with task=classify"):
        YOLOPrune("yolov8n-cls.yaml").train(data=str(tmp_path), sr=0.001)
    data = folder_classes(tmp_path / "cls")
    code, out = cli(f"yolo classify train model=yolov8n-cls.yaml data={data} epochs=1 sr=0.001 "
                    f"project={tmp_path / 'runs'}")  # fmt: skip
    assert code == 2 and "'task=classify' is not supported" in out, out
    assert not (tmp_path / "runs").exists()


def test_sr0_training_is_ultralytics_own(synthetic_data, tmp_path):
    """`yolo train sr=0` through our `yolo` writes what Ultralytics' own entrypoint writes, the same weights too."""
    from ultralytics.cfg import entrypoint as ultralytics_entrypoint

    common = (f"model=yolov8n.yaml data={synthetic_data} epochs=1 imgsz=64 batch=8 workers=0 seed=0 deterministic=True "
              f"plots=False exist_ok=True project={tmp_path}")  # fmt: skip
    code, out = cli(f"yolo train {common} name=ours sr=0 sr_decay=0.0")
    assert code is None, out
    ultralytics_entrypoint(f"yolo train {common} name=theirs")
    files = {run: sorted(p.relative_to(tmp_path / run).as_posix() for p in (tmp_path / run).rglob("*"))
             for run in ("ours", "theirs")}  # fmt: skip
    assert files["ours"] == files["theirs"] and "gamma.png" not in files["ours"]
    headers = [next(csv.reader(open(tmp_path / run / "results.csv", encoding="utf-8"))) for run in ("ours", "theirs")]
    assert headers[0] == headers[1]
    ours, theirs = (torch.load(tmp_path / run / "weights" / "last.pt", weights_only=False)["model"].state_dict()
                    for run in ("ours", "theirs"))  # fmt: skip
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
