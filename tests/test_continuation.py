"""Fine-tunes go on from the parent's training (`cfg/continuation.py`): what a checkpoint records, the keys made of
it, and that the user's keys win."""

from __future__ import annotations

import pytest
from ultralytics.nn.tasks import DetectionModel

from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides
from ultralytics_prune.cfg.continuation import (
    AUTO_ITERATIONS,
    CONTINUE_LR_RISE,
    FALLBACK_KEYS,
    ParentTraining,
    continuation_keys,
    read_parent_training,
)
from ultralytics_prune.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return DetectionModel("yolov8n.yaml", nc=3, verbose=False)


def saved(model, folder, name: str, **extra):
    """A checkpoint of `model` with `extra` entries (e.g. `train_args`, `updates`)."""
    train_args = extra.pop("train_args", None)
    return save_checkpoint(model, folder / f"{name}.pt", train_args=train_args, **extra)


def test_reads_what_ultralytics_resolved(model, tmp_path):
    ckpt = saved(model, tmp_path, "adamw", train_args={"optimizer": "AdamW", "lr0": 0.001429, "lrf": 0.01,
                                                       "close_mosaic": 10, "mosaic": 1.0})  # fmt: skip
    assert read_parent_training(ckpt) == ParentTraining("AdamW", 0.001429, 0.01, True)
    keys = continuation_keys(read_parent_training(ckpt))
    assert keys["optimizer"] == "AdamW" and keys["warmup_epochs"] == 0.0 and keys["warmup_bias_lr"] == 0.0
    assert keys["lr0"] == pytest.approx(0.001429 * 0.01 * CONTINUE_LR_RISE), "starts near the rate the parent ended at"
    assert keys["lr0"] * keys["lrf"] == pytest.approx(0.001429 * 0.01), "and ends where the parent ended"
    assert keys["mosaic"] == 0.0, "the parent's last epochs ran without mosaic: so does the fine-tune"


def test_a_continuation_continued_keeps_its_rates(model, tmp_path):
    """A pruned checkpoint pruned again: the keys its own fine-tune ran with give the same rates, not ten times less."""
    first = continuation_keys(ParentTraining("SGD", 0.01, 0.01, False))
    again = continuation_keys(ParentTraining(first["optimizer"], first["lr0"], first["lrf"], False))
    assert again["lr0"] == pytest.approx(first["lr0"]) and again["lrf"] == pytest.approx(first["lrf"])
    assert "mosaic" not in first, "a parent that ended with mosaic keeps it"


def test_auto_left_unresolved_by_older_ultralytics(model, tmp_path):
    small = saved(model, tmp_path, "small", train_args={"optimizer": "auto", "lr0": 0.01, "lrf": 0.01}, updates=600)
    large = saved(model, tmp_path, "large", train_args={"optimizer": "auto", "lr0": 0.01, "lrf": 0.01},
                  updates=AUTO_ITERATIONS + 1)  # fmt: skip
    assert read_parent_training(small) == ParentTraining("AdamW", round(0.002 * 5 / (4 + 3), 6), 0.01, False)
    assert read_parent_training(large) == ParentTraining("SGD", 0.01, 0.01, False)


def test_no_recorded_training(model, tmp_path):
    bare = saved(model, tmp_path, "bare")
    assert read_parent_training(bare) is None and read_parent_training(tmp_path / "missing.pt") is None
    assert continuation_keys(None) == FALLBACK_KEYS


def test_the_users_keys_win(model, tmp_path):
    ckpt = saved(model, tmp_path, "sgd", train_args={"optimizer": "SGD", "lr0": 0.01, "lrf": 0.01, "close_mosaic": 10})
    args = get_prune_cfg(overrides={**recipe_overrides({"model": str(ckpt), "lr0": 0.005, "mosaic": 0.5}),
                                    "mode": "prune"})  # fmt: skip
    assert (args.optimizer, args.lr0, args.mosaic, args.warmup_epochs) == ("SGD", 0.005, 0.5, 0.0)
    assert get_prune_cfg(overrides={"mode": "train"}).optimizer == "auto", "plain training keeps Ultralytics' defaults"
