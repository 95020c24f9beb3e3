"""Bad input, as a new user would give it: one line naming the problem, exit 2, nothing written, inputs untouched.

One table, each row a command line and what its one line must say. Every row checks the same four things: exit
status 2, exactly one logged error line, no run folder (nor any other new file) under the project, and the
checkpoint and dataset files byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.nn.tasks import ClassificationModel, DetectionModel

from tools.make_dataset import make_synthetic_dataset
from ultralytics_prune.checkpoint import save_checkpoint
from ultralytics_prune.cli import entrypoint


@pytest.fixture(scope="module")
def inputs(synthetic_data, tmp_path_factory) -> dict[str, Path]:
    """Good and bad checkpoints and datasets, named by the table's placeholders."""
    root = tmp_path_factory.mktemp("bad_inputs")
    good = save_checkpoint(DetectionModel("yolov8n.yaml", nc=3, verbose=False), root / "good.pt")
    nan_model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    with torch.no_grad():
        nan_model.model[0].conv.weight[0, 0, 0, 0] = float("nan")
    torch.save({"model": nan_model, "train_args": {}}, root / "nan.pt")  # as Ultralytics writes; ours refuses NaN
    (root / "corrupt.pt").write_bytes(b"\x80\x04not a checkpoint" * 64)
    (root / "empty.pt").write_bytes(b"")
    (root / "empty").mkdir()
    info = yaml.safe_load(synthetic_data.read_text())
    (root / "no_train.yaml").write_text(yaml.safe_dump({**info, "train": str(root / "empty")}))
    (root / "no_val.yaml").write_text(yaml.safe_dump({**info, "val": str(root / "empty")}))
    (root / "not_yaml.yaml").write_text("names: [a, b\n")
    return {
        "GOOD": good,
        "NAN": root / "nan.pt",
        "CLS": save_checkpoint(ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), root / "cls.pt"),
        "CORRUPT": root / "corrupt.pt",
        "EMPTY_PT": root / "empty.pt",
        "DATA": synthetic_data,
        "TWO_CLASSES": make_synthetic_dataset(root / "two", n_train=2, n_val=1, imgsz=32, nc=2),
        "NO_TRAIN": root / "no_train.yaml",
        "NO_VAL": root / "no_val.yaml",
        "NOT_YAML": root / "not_yaml.yaml",
        "NO_ARGS": root / "empty",
    }


OK = "model=GOOD data=DATA imgsz=64"
TABLE = [
    # checkpoints
    ("prune model=MISSING.pt data=DATA", "not found"),
    ("prune model=CORRUPT data=DATA", "could not be read"),
    ("prune model=EMPTY_PT data=DATA", "could not be read"),
    ("prune model=yolov8n.yaml data=DATA", "is not a checkpoint"),
    ("slim model=yolov8n.yaml data=DATA", "is not a checkpoint"),
    ("prune model=NAN data=DATA", "non-finite weights"),
    ("prune model=CLS data=DATA", "holds a ClassificationModel"),
    ("prune data=DATA", "'model' argument is missing"),
    # keys: type and range
    (f"prune {OK} rate=1.5", "rate"),
    (f"prune {OK} rate=-0.1", "rate"),
    (f"prune {OK} rate=half", "rate"),
    (f"prune {OK} round_to=0", "round_to"),
    (f"prune {OK} iterative_steps=0", "iterative_steps"),
    (f"prune {OK} iterative_steps=2.5", "iterative_steps"),
    (f"prune {OK} importance=magic", "importance"),
    (f"prune {OK} distill=True distill_loss=logits", "'response' or 'feature'"),
    (f"prune {OK} attention=heads", "attention"),
    (f"prune {OK} sensitivity=maybe", "sensitivity"),
    (f"prune {OK} target_macs=-1", "target_macs"),
    (f"prune {OK} speedup=0.5", "speedup"),
    (f"prune {OK} recalibrate=-5", "recalibrate"),
    (f"prune {OK} reconstruct=-2", "reconstruct"),
    (f"prune {OK} max_map_drop=2", "max_map_drop"),
    (f"prune {OK} epochs=-1", "epochs"),
    (f"slim {OK} threshold=-1", "threshold"),
    (f"slim {OK} min_channels=0", "min_channels"),
    (f"prune {OK} lr0=fast", "lr0"),
    (f"prune {OK} colour=red", "colour"),
    (f"prune {OK} sensitivity=True global_pruning=True", "choose one"),
    (f"prune {OK} sensitivity=True latency_aware=True", "choose one"),
    (f"slim {OK} latency_aware=True", "'latency_aware=True' works with 'yolo prune'"),
    (f"prune {OK} method=unstructured latency_aware=True", "does not apply to 'method=unstructured'"),
    (f"slim {OK} attention=prune", "'attention=prune' works with 'yolo prune'"),
    (f"prune {OK} hold=99", "'hold=99' names no layer"),
    (f"prune {OK} method=sparse", "method"),
    (f"slim {OK} method=unstructured", "'method=unstructured' is a 'yolo prune' method"),
    (f"prune {OK} method=unstructured speedup=2", "does not apply to 'method=unstructured'"),
    # datasets
    ("prune model=GOOD imgsz=64", "'data' argument is missing"),
    ("prune model=GOOD data=MISSING.yaml imgsz=64", "cannot be used"),
    ("prune model=GOOD data=NOT_YAML imgsz=64", "cannot be used"),
    ("prune model=GOOD data=NO_TRAIN imgsz=64", "no train images"),
    ("prune model=GOOD data=NO_VAL imgsz=64", "no val images"),
    ("prune model=GOOD data=TWO_CLASSES imgsz=64", "predicts 3 classes"),
    # device, image size, task, resume
    (f"prune {OK} device=7", "'device=7'"),
    ("prune model=GOOD data=DATA imgsz=16", "'imgsz=16'"),
    (f"prune {OK} task=classify", "'task=classify' is not supported"),
    ("prune resume=True", "no unfinished prune run"),
    ("prune resume=NO_ARGS", "not a prune run folder"),
]


def digest(paths: list[Path]) -> dict[Path, str]:
    """sha256 of every file under `paths` (files or folders)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("line, says", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, line, says, logged):
    assert len(TABLE) >= 25
    for name, path in inputs.items():
        line = line.replace(name, str(path))
    project = tmp_path / "project"
    protected = [inputs["GOOD"], inputs["DATA"].parent, inputs["NO_ARGS"]]
    before = digest(protected)
    with logged(logging.ERROR) as lines:
        with pytest.raises(SystemExit) as e:
            entrypoint(f"yolo {line} project={project}")
    assert e.value.code == 2, f"exit {e.value.code}"
    assert len(lines) == 1 and "\n" not in lines[0] and "Traceback" not in lines[0], lines
    assert says in lines[0], lines[0]
    assert not project.exists(), "a run that cannot start must leave no folder"
    assert digest(protected) == before, "an input file changed"
