"""Everything a fine-tune needs to go on after `kill -9` exactly where it stopped, saved at the end of every epoch.

Ultralytics' own `last.pt` stores the EMA in half precision and no random state, so a run resumed from it follows
another path than the run that was killed. The state saved here is complete for a single-process CPU or GPU run: the
live model, the EMA, the optimizer and scaler in full precision, the epoch, the best fitness and early-stopping
counters, the global random generators and the rows of `results.csv`.

The order of the training images is the other half. A loader's shuffling generator is drawn from lazily (a pass's
permutation when its first batch is asked for, and, depending on the batch size, once more when the pass ends) and
on every reset of the loader, which Ultralytics does when it closes mosaic: a resumed run would draw differently.
So `epoch_shuffle` gives each epoch a fresh loader pass whose permutation depends on the seed and the epoch only.

Restored right before the first epoch, the run goes on bit for bit as if it had never stopped (CPU, `workers=0`,
`deterministic=True`; with loader workers the augmentation streams of the workers restart). An epoch ends on an
optimizer step when the batches of an epoch are a multiple of `nbs / batch`; otherwise the gradient accumulated over
the last batches of the killed epoch is lost, as with Ultralytics' own resume.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from ultralytics_prune.checkpoint import save_atomic

RESUME_STATE = "resume_state.pt"  # next to Ultralytics' last.pt in a fine-tune's weights folder


def _rng_states() -> dict:
    """The global random generators' states (Python, NumPy, torch CPU and CUDA)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_states(states: dict) -> None:
    """Put the global random generators back to `states` (from `_rng_states`)."""
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextmanager
def caller_random_state() -> Iterator[None]:
    """Give the caller back its global random generators after the block.

    The pruning loop draws from local generators only, but Ultralytics' trainer reseeds the global ones (`init_seeds`)
    and its validator draws from Python's (`check_file_speeds`, the BGR flip of `Format`).
    """
    states = _rng_states()
    try:
        yield
    finally:
        _set_rng_states(states)


def save_training_state(trainer, file: str | Path) -> Path:
    """Write the state of `trainer` at the end of its current epoch to `file` (temp file, then rename)."""
    file = Path(file)
    state = {
        "epoch": trainer.epoch,
        "finished": bool(trainer.stop),  # Ultralytics decides the last epoch before it saves
        "model": deepcopy(unwrap_model(trainer.model).state_dict()),
        "ema": deepcopy(trainer.ema.ema.state_dict()) if trainer.ema else None,
        "updates": trainer.ema.updates if trainer.ema else 0,
        "optimizer": deepcopy(trainer.optimizer.state_dict()),
        "scaler": trainer.scaler.state_dict(),
        "best_fitness": trainer.best_fitness,
        "fitness": trainer.fitness,
        "metrics": dict(trainer.metrics or {}),
        "stopper": dict(trainer.stopper.__dict__),
        "rng": _rng_states(),
        "results_csv": trainer.csv.read_text(encoding="utf-8") if trainer.csv.exists() else None,
    }
    return save_atomic(state, file)


def restore_training_state(trainer, file: str | Path) -> bool:
    """Load the state `save_training_state` wrote into a set-up `trainer`, so it goes on with the next epoch.

    Call it after Ultralytics' `_setup_train` and before the first epoch (the `on_train_start` callback). A state
    whose tensors do not fit the model (another run's) is ignored with a warning.

    Returns:
        (bool): True when the state was restored.
    """
    state = torch.load(file, map_location="cpu", weights_only=False)
    model = unwrap_model(trainer.model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in state["model"].items()}:
        LOGGER.warning(f"{file} does not fit this model; fine-tuning from the start instead")
        return False
    model.load_state_dict(state["model"])
    if trainer.ema and state["ema"] is not None:
        trainer.ema.ema.load_state_dict(state["ema"])
        trainer.ema.updates = state["updates"]
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.best_fitness, trainer.fitness, trainer.metrics = state["best_fitness"], state["fitness"], state["metrics"]
    trainer.stopper.__dict__.update(state["stopper"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.scheduler.last_epoch = trainer.start_epoch - 1  # the next scheduler.step() gives the next epoch's lr
    if state["results_csv"] is not None:
        trainer.csv.write_text(state["results_csv"], encoding="utf-8")
    _set_rng_states(state["rng"])
    LOGGER.info(f"continuing the interrupted fine-tune from {file} at epoch {trainer.start_epoch + 1} of "
                f"{trainer.epochs}" + ("" if not (why := inexact_continuation(trainer)) else
                                       f"; it will not match a run never stopped bit for bit: {why}"))  # fmt: skip
    return True


def training_finished(file: str | Path) -> bool:
    """True when the state in `file` was saved after the fine-tune's last epoch (nothing is left to train)."""
    return bool(torch.load(file, map_location="cpu", weights_only=False).get("finished"))


def inexact_continuation(trainer) -> str:
    """Why a fine-tune continued from its saved state cannot follow the run never stopped exactly ('' when it can)."""
    reasons = []
    accumulate = max(round(trainer.args.nbs / trainer.batch_size), 1)
    batches = len(trainer.train_loader)
    if batches % accumulate:
        reasons.append(f"its epochs end inside a gradient accumulation ({batches} batches of {trainer.batch_size}, "
                       f"nbs={trainer.args.nbs} accumulates {accumulate}; nbs=batch avoids it)")  # fmt: skip
    if trainer.args.workers and trainer.device.type == "cpu":
        reasons.append(f"workers={trainer.args.workers} loader processes restart their augmentation streams")
    if not trainer.args.deterministic:
        reasons.append("deterministic=False")
    return "; ".join(reasons)


def epoch_shuffle(loader, seed: int, epoch: int) -> None:
    """Start a fresh pass of `loader` whose shuffle depends on (`seed`, `epoch`) only, now and after any `reset()`.

    The loader's `reset` is wrapped once so that a reset Ultralytics makes later in the same epoch (closing mosaic)
    seeds the generator again after the new iterator took its draw.
    """
    generator = getattr(loader, "generator", None)
    if generator is None or not hasattr(loader, "reset"):
        return
    loader.epoch_seed = (seed + 1) * 1_000_003 + epoch
    if "reset" not in loader.__dict__:

        def seeded_reset():
            type(loader).reset(loader)
            generator.manual_seed(loader.epoch_seed)

        loader.reset = seeded_reset
    loader.reset()
