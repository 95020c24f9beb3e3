"""Shared fixtures: a small synthetic dataset made on the fly; nothing is downloaded."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share the cores: one thread each (and in every process a test starts), or each worker's
    # OpenMP threads spin while the other's run. Set before torch is imported, which reads it once.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tools` is a folder of scripts, not part of the installed package

from tools.make_dataset import make_synthetic_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def no_timing_pauses(monkeypatch) -> None:
    """No test reads a timing (timed assertions do not belong here), so the pauses that let a measurement settle only
    cost the suite time: a run's report times every row in turns, about a second of pauses each."""
    from ultralytics_prune.measure import latency

    monkeypatch.setattr(latency, "TURN_PAUSE_S", 0.0)
    monkeypatch.setattr(latency, "ALONE_PAUSE_S", 0.0)


@pytest.fixture(autouse=True)
def latency_table_cache(tmp_path, monkeypatch) -> Path:
    """Latency tables are cached in a folder of each test's own, never in the user's settings folder."""
    from ultralytics_prune.measure import latency_table as latency_table

    monkeypatch.setattr(latency_table, "CACHE_DIR", tmp_path / "latency_tables")
    return tmp_path / "latency_tables"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """data.yaml of a 3-class synthetic detection set: 32 train and 8 val images of 64 px."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=32, n_val=8, imgsz=64, nc=3, seed=0)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    """A project folder for training and pruning runs of the whole session."""
    return tmp_path_factory.mktemp("runs")


@contextmanager
def collect_log(level: int = logging.INFO) -> Iterator[list[str]]:
    """The messages Ultralytics' LOGGER logs at `level` or above inside the block, independent of pytest's capture.

    The collecting handler goes first: Ultralytics' formatter rewrites `record.msg` with its level prefix, so a
    handler after it would see the prefix added again.
    """
    from ultralytics.utils import LOGGER

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=level)
    LOGGER.handlers.insert(0, handler)
    try:
        yield messages
    finally:
        LOGGER.removeHandler(handler)


@pytest.fixture
def logged():
    """`collect_log`, as a fixture: `with logged(logging.ERROR) as lines: ...`."""
    return collect_log
