"""Trainer subclasses: train a pruned model as it is, and Network-Slimming sparsity training, for every task.

Each behaviour is a mixin placed before Ultralytics' trainer of a task (its segment, pose and OBB trainers subclass the
detection one), so `PRUNED_TRAINERS[task]` and `SPARSITY_TRAINERS[task]` are real classes at module level: Ultralytics'
DDP launcher imports a trainer by its module and name in a fresh process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import LOGGER, RANK, colorstr
from ultralytics.utils.torch_utils import unwrap_model
from ultralytics_prune.cfg import DEFAULT_PRUNE_CFG_DICT, get_prune_cfg, ultralytics_args

from ultralytics_prune.channels.graph import prunable_batchnorms
from ultralytics_prune.checkpoint import is_pruned, make_trainable, pruned_info
from ultralytics_prune.errors import UserError
from ultralytics_prune.measure.plots import plot_gamma_heatmap
from ultralytics_prune.recipes.finetune_state import epoch_shuffle, restore_training_state, save_training_state
from ultralytics_prune.measure.gamma import gamma_histogram, gamma_stats
from ultralytics_prune.recipes.weight_sparsity import hold_zero_weights

PREFIX = colorstr("prune: ")
ACCURACY_FALL = 0.2  # sparsity training warns once when mAP50-95 falls this share below its best so far
SPARSITY_PREFIX = colorstr("sparsity: ")


class PrunedModelMixin:
    """Makes a task's trainer know the ultralytics-prune keys and train a pruned model as it was loaded.

    Ultralytics rebuilds the network from `model.yaml` and copies only the tensors whose shapes match, so a pruned
    model would silently come back at full width. Here a pruned model given as weights (a module, or a checkpoint
    path, which is how Ultralytics' DDP launcher starts a fresh process) is trained as it is, every parameter with
    gradients on (Ultralytics keeps only DFL's fixed projection frozen).
    """

    def __init__(self, cfg=DEFAULT_PRUNE_CFG_DICT, overrides: dict | None = None, _callbacks=None):
        """Check every key once (this is an entry point: Ultralytics' DDP launcher starts it), then initialise.

        Ultralytics' own `get_cfg` then merges `overrides` over the checked namespace again, which it needs for
        `resume` (the keys a resumed run may change are read from `overrides`).
        """
        checked = get_prune_cfg(cfg, overrides)
        super().__init__(cfg=checked, overrides=overrides, _callbacks=_callbacks)
        self.state_file: Path | None = None  # set by the pruning loop: where each epoch's full state is written
        self.continue_from: Path | None = None  # set by the pruning loop: the state of an interrupted fine-tune
        self.add_callback("on_train_start", lambda trainer: trainer.continue_interrupted())
        self.add_callback("on_train_epoch_start", lambda trainer: trainer.shuffle_by_epoch())

    def shuffle_by_epoch(self) -> None:
        """In the pruning loop's fine-tunes, shuffle each epoch from (seed, epoch) alone, so a continued run matches."""
        if self.state_file is not None and RANK == -1:
            epoch_shuffle(self.train_loader, self.args.seed, self.epoch)

    def continue_interrupted(self) -> None:
        """Before the first epoch: load `continue_from` (see `finetune_state`), so the fine-tune goes on from there."""
        if self.continue_from is not None and RANK in {-1, 0}:
            restore_training_state(self, self.continue_from)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer; for a model pruned by `method=unstructured` it keeps the zero weights at zero."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if pruned_info(unwrap_model(model)).get("method") == "unstructured":
            hold_zero_weights(optimizer, unwrap_model(model))
        return optimizer

    def save_model(self):
        """Ultralytics' `last.pt` / `best.pt`, each written to a temp file and renamed; then `state_file`."""
        files = self.last, self.best
        self.last, self.best = (f.with_name(f".{f.name}.tmp") for f in files)
        try:
            saved = super().save_model()
        finally:
            temps, (self.last, self.best) = (self.last, self.best), files
        for tmp, file in zip(temps, files):
            if tmp.exists():
                os.replace(tmp, file)
        if self.state_file is not None and RANK in {-1, 0}:
            save_training_state(self, self.state_file)
        return saved

    def final_eval(self):
        """Ultralytics' final evaluation, whose in-place stripping of `last.pt` / `best.pt` is done on copies that are
        then renamed over the files: a kill at any moment leaves each file whole."""
        files = self.last, self.best
        temps = tuple(f.with_name(f".{f.stem}.final-tmp.pt") for f in files)  # validated: Ultralytics reads .pt
        for file, tmp in zip(files, temps):
            if file.exists():
                shutil.copyfile(file, tmp)
        self.last, self.best = temps
        try:
            super().final_eval()
        finally:
            self.last, self.best = files
        for tmp, file in zip(temps, files):
            if tmp.exists():
                os.replace(tmp, file)

    def get_validator(self):
        """The task's Ultralytics validator, given the args without our keys (it checks them against its own)."""
        args, self.args = self.args, ultralytics_args(self.args)
        try:
            return super().get_validator()
        finally:
            self.args = args

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """Return the pruned module itself when `weights` is pruned, else build from yaml as Ultralytics does."""
        if not (isinstance(weights, nn.Module) and is_pruned(weights)):
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        nc = self.data["nc"]
        if weights.yaml.get("nc", nc) != nc:
            raise UserError(
                f"the pruned model predicts nc={weights.yaml.get('nc')} classes but data has nc={nc}; "
                f"fine-tune it on the dataset it was pruned for"
            )
        kpt_shape = self.data.get("kpt_shape")
        if kpt_shape and list(getattr(weights, "kpt_shape", kpt_shape)) != list(kpt_shape):
            raise UserError(
                f"the pruned model predicts kpt_shape={list(weights.kpt_shape)} but data has kpt_shape={kpt_shape}; "
                f"fine-tune it on the dataset it was pruned for"
            )
        model = make_trainable(weights.float())
        if verbose and RANK in {-1, 0}:
            n = sum(p.numel() for p in model.parameters())
            LOGGER.info(f"{PREFIX}training the pruned model as loaded ({n:,} parameters), not rebuilt from yaml")
        return model


class SparsityMixin:
    """Network Slimming sparsity training (Liu et al. 2017): an L1 penalty on the prunable BatchNorm gammas.

    `sr` is the lambda of the paper: the weight of sum(|gamma|) next to the per-image mean loss. Ultralytics' gradient
    at an optimizer step is the sum over a nominal batch of `nbs` (64) images (the loss is scaled by the batch size
    and accumulated), so `sr * nbs * sign(gamma)` is added to the gradient of every prunable BatchNorm weight once
    per optimizer step: the same strength for any batch size. It is added by a step pre-hook of the optimizer, so
    after Ultralytics' AMP unscale and gradient clipping: the term is never clipped and never shrinks the detection
    gradient, and Ultralytics' `optimizer_step` runs unchanged. Which BatchNorms are prunable comes from the model's
    channel dependency graph. Every epoch, statistics of |gamma| go to results.csv and a histogram heat-map to
    `gamma.png`. With `sr=0` the weights follow plain Ultralytics training bit for bit.
    """

    def __init__(self, cfg=DEFAULT_PRUNE_CFG_DICT, overrides: dict | None = None, _callbacks=None):
        """Initialise; the prunable BatchNorms are found when first needed (the model is built later)."""
        super().__init__(cfg=cfg, overrides=overrides, _callbacks=_callbacks)
        self._prunable_bns: list[nn.BatchNorm2d] | None = None
        self._gamma_histograms: list = []
        self._first_median: float | None = None
        self._warned = False
        self._best_map, self._accuracy_warned = 0.0, False

    @property
    def prunable_bns(self) -> list[nn.BatchNorm2d]:
        """The prunable BatchNorm layers of the model being trained (found once, from the dependency graph)."""
        if self._prunable_bns is None:
            model = unwrap_model(self.model)
            self._prunable_bns = prunable_batchnorms(model, imgsz=max(64, int(model.stride.max())))
            if RANK in {-1, 0}:
                total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
                LOGGER.info(f"{SPARSITY_PREFIX}{len(self._prunable_bns)}/{total} BatchNorm layers are prunable")
        return self._prunable_bns

    def sparsity_rate(self) -> float:
        """The L1 strength for the current epoch, decayed linearly when `sr_decay > 0`."""
        return self.args.sr * (1 - self.args.sr_decay * self.epoch / max(self.epochs, 1))

    def add_sparsity_term(self, optimizer=None, args=(), kwargs=None) -> None:
        """Add `sr * nbs * sign(gamma)` to the gradient of every prunable BatchNorm weight (an optimizer pre-hook)."""
        strength = self.sparsity_rate() * self.args.nbs
        if strength <= 0:
            return
        for bn in self.prunable_bns:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=strength)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer with the sparsity term as a step pre-hook; SGD for `optimizer=auto` when sr > 0.

        Adam normalises every gradient and would turn the sign term into a fixed step.
        """
        if self.args.sr > 0 and name == "auto":
            LOGGER.info(f"{SPARSITY_PREFIX}'optimizer=auto' with sr>0: using SGD(lr0={lr}), as Adam rescales sr")
            name = self.args.optimizer = "SGD"
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        optimizer.register_step_pre_hook(self.add_sparsity_term)
        self._first_median = gamma_stats(self.prunable_bns)["gamma/median"]  # before the first step
        return optimizer

    def l1_push_per_epoch(self) -> float:
        """How far the L1 term moves each gamma in one epoch at the current learning rate (SGD with momentum)."""
        steps = len(self.train_loader) / max(1, self.accumulate)
        lr = self.optimizer.param_groups[0]["lr"]
        return lr * self.sparsity_rate() * self.args.nbs * steps / max(1e-3, 1 - self.args.momentum)

    def check_sparsity(self, stats: dict) -> None:
        """Say once, a quarter into training, when the gammas are not sinking, and which sr would make them."""
        done = self.epoch + 1
        if self.args.sr <= 0 or self._warned or done < max(1, self.epochs // 4) or RANK not in {-1, 0}:
            return
        if self._first_median is None:  # resumed: the median before training is not known
            return
        self._warned = True
        start, now = self._first_median, stats["gamma/median"]
        if now < 0.9 * start or stats["gamma/lt1e-2"] > 0.05:
            return
        push = self.l1_push_per_epoch()
        suggested = self.args.sr * start / max(push * self.epochs, 1e-12)
        LOGGER.warning(
            f"{SPARSITY_PREFIX}sparsity is not happening: median |gamma| {start:.3f} -> {now:.3f} after {done} epochs, "
            f"{stats['gamma/lt1e-2']:.1%} below 1e-2. At sr={self.args.sr:g} the L1 term moves each gamma by about "
            f"{push:.3g} per epoch ({push * self.epochs:.3g} over the run); sr={suggested:.2g} would move the median "
            f"to zero over {self.epochs} epochs (use optimizer=SGD)"
        )

    def check_accuracy(self, metrics: dict, stats: dict) -> None:
        """Say once when mAP50-95 fell more than `ACCURACY_FALL` below its best so far while the gammas sank: the L1
        term is then pushing out what the model needs, not what it can lose."""
        now = metrics.get("metrics/mAP50-95(B)")
        if self.args.sr <= 0 or now is None or RANK not in {-1, 0} or self._accuracy_warned:
            return
        self._best_map = max(self._best_map, now)
        if self._best_map > 0 and now < (1 - ACCURACY_FALL) * self._best_map:
            self._accuracy_warned = True
            LOGGER.warning(
                f"{SPARSITY_PREFIX}mAP50-95 fell to {now:.3f} from {self._best_map:.3f} while the median |gamma| sank "
                f"to {stats['gamma/median']:.3g}: sr={self.args.sr:g} removes what the model needs; a smaller sr "
                f"(e.g. {self.args.sr / 4:.2g}) or sr_decay keeps its accuracy while the gammas sink"
            )

    def save_metrics(self, metrics: dict):
        """Add |gamma| statistics to results.csv and redraw the gamma heat-map."""
        bns = self.prunable_bns
        stats = gamma_stats(bns)
        super().save_metrics({**metrics, **stats})
        self._gamma_histograms.append(gamma_histogram(bns))
        self.check_sparsity(stats)
        self.check_accuracy(metrics, stats)
        if self.args.plots:
            plot_gamma_heatmap(self._gamma_histograms, self.save_dir / "gamma.png", title=f"|gamma| sr={self.args.sr}")


class PrunedModelTrainer(PrunedModelMixin, DetectionTrainer):
    """Detection trainer for pruned models (see `PrunedModelMixin`)."""


class PrunedSegmentationTrainer(PrunedModelMixin, SegmentationTrainer):
    """Segmentation trainer for pruned models (see `PrunedModelMixin`)."""


class PrunedPoseTrainer(PrunedModelMixin, PoseTrainer):
    """Pose trainer for pruned models (see `PrunedModelMixin`)."""


class PrunedOBBTrainer(PrunedModelMixin, OBBTrainer):
    """OBB trainer for pruned models (see `PrunedModelMixin`)."""


class SparsityTrainer(SparsityMixin, PrunedModelTrainer):
    """Detection trainer with Network-Slimming sparsity training (see `SparsityMixin`)."""


class SegmentationSparsityTrainer(SparsityMixin, PrunedSegmentationTrainer):
    """Segmentation trainer with Network-Slimming sparsity training (see `SparsityMixin`)."""


class PoseSparsityTrainer(SparsityMixin, PrunedPoseTrainer):
    """Pose trainer with Network-Slimming sparsity training (see `SparsityMixin`)."""


class OBBSparsityTrainer(SparsityMixin, PrunedOBBTrainer):
    """OBB trainer with Network-Slimming sparsity training (see `SparsityMixin`)."""


PRUNED_TRAINERS = {"detect": PrunedModelTrainer, "segment": PrunedSegmentationTrainer, "pose": PrunedPoseTrainer,
                   "obb": PrunedOBBTrainer}  # fmt: skip
SPARSITY_TRAINERS = {"detect": SparsityTrainer, "segment": SegmentationSparsityTrainer, "pose": PoseSparsityTrainer,
                     "obb": OBBSparsityTrainer}  # fmt: skip
