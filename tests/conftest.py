"""Shared fixtures: a small synthetic dataset made on the fly; nothing is downloaded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is a folder of scripts, not part of the installed package

from tools.make_dataset import make_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """data.yaml of a 3-class synthetic detection set: 32 train and 8 val images of 64 px."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=32, n_val=8, imgsz=64, nc=3, seed=0)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    """A project folder for training and pruning runs of the whole session."""
    return tmp_path_factory.mktemp("runs")
