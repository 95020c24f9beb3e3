"""Tests for Network-Slimming sparsity training: `SparsityTrainer`, `prunable_batchnorms` and `gamma_stats`."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from ultralytics.nn.modules.block import AAttn, Attention
from ultralytics.nn.tasks import DetectionModel
from ultralytics_prune.patches.blocks import TWINS
from ultralytics_prune.patches.trainer import SparsityTrainer

from ultralytics_prune import YOLOPrune
from ultralytics_prune.channels.graph import prunable_batchnorms
from ultralytics_prune.measure.gamma import HIST_EDGES, gamma_histogram, gamma_stats

GAMMA_KEYS = ("gamma/lt1e-2", "gamma/lt1e-3", "gamma/median", "gamma/mean")
SCALE = 1024.0  # a power of two: scaling a gradient by it and back is exact in float32

# Settings under which the gammas of the tiny synthetic set visibly sink in 4 CPU epochs (measured: the median |gamma|
# goes 0.80 -> 0.50 -> 0.23 -> 0.07 and some channels end below 1e-2; with sr=0 it stays ~1.0). The term is added after
# gradient clipping, so it acts in full: sr=0.04 already overshoots zero and the median oscillates.
SPARSE_SR = 0.02
SPARSE_TRAIN = dict(
    epochs=4,
    imgsz=64,
    batch=8,
    nbs=8,
    warmup_epochs=0,
    lr0=0.1,
    optimizer="SGD",
    workers=0,
    deterministic=True,
    seed=0,
    val=False,
    exist_ok=True,
)


# ---------------------------------------------------------------------------------------------------------------------
# helpers


class StubScaler:
    """A GradScaler stand-in: `unscale_` divides every gradient by `scale`; `step` steps the optimizer."""

    def __init__(self, model: nn.Module, scale: float = SCALE):
        self.model = model
        self.scale = scale
        self.calls: list[str] = []

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.div_(self.scale)

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")


def randomize_gammas(model: nn.Module, seed: int = 0) -> None:
    """Give the BatchNorm weights both signs and some exact zeros, so sign(gamma) takes all of -1, 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                w = torch.randn(m.num_features, generator=g)
                w[torch.rand(m.num_features, generator=g) < 0.1] = 0.0
                m.weight.copy_(w)


def known_grads(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Small known gradients g for every parameter (BatchNorm weights included), kept well under the clip norm."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen) * 1e-4 for n, p in model.named_parameters()}


def set_scaled_grads(model: nn.Module, grads: dict[str, torch.Tensor], scale: float = SCALE) -> None:
    """Set every parameter's gradient to scale * g, as after a backward pass of an AMP-scaled loss."""
    for n, p in model.named_parameters():
        p.grad = grads[n] * scale


def read_results(csv_file: Path) -> list[dict[str, float]]:
    """Rows of an Ultralytics results.csv as {column: float} (column names stripped of padding)."""
    with open(csv_file, encoding="utf-8") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------------------------------
# 1. the sparsity term: once per optimizer step, after unscaling, on the prunable BatchNorm weights only


def make_hand_trainer(data: Path, project: Path, **keys) -> SparsityTrainer:
    """A SparsityTrainer with a yolo11n model and its own lr=0 SGD optimizer (built by the trainer, hook included).

    A recording pre-hook registered after the trainer's keeps the gradients each `optimizer.step()` sees, in
    `trainer.seen`. yolo11n has BatchNorms that are not prunable (inside its attention block), so both kinds count.
    """
    trainer = SparsityTrainer(
        overrides={"model": "yolo11n.yaml", "data": str(data), "project": str(project), "name": "hand",
                   "exist_ok": True, **keys}
    )  # fmt: skip
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    randomize_gammas(model)
    trainer.model = model
    trainer.ema = None
    trainer.epoch, trainer.epochs = 0, 1
    trainer.optimizer = trainer.build_optimizer(model, name="SGD", lr=0.0, momentum=0.0, decay=0.0)
    trainer.seen = []

    def record(optimizer, args, kwargs):
        trainer.seen.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(record)
    return trainer


@pytest.fixture
def hand_trainer(synthetic_data, tmp_path):
    """A fresh hand trainer per test (sr=1e-3); a test sets its own keys with `make_hand_trainer`."""
    return make_hand_trainer(synthetic_data, tmp_path, sr=1e-3)


def bn_weight_names(model: nn.Module, bns) -> set[str]:
    """Parameter names of the weights of `bns` in `model`."""
    ids = {id(bn) for bn in bns}
    return {f"{n}.weight" for n, m in model.named_modules() if id(m) in ids}


def run_step(trainer, grads) -> tuple[StubScaler, dict[str, torch.Tensor]]:
    """Set the scaled gradients, call Ultralytics' `optimizer_step()` once; return the scaler and what the step saw."""
    scaler = trainer.scaler = StubScaler(trainer.model)
    set_scaled_grads(trainer.model, grads)
    before = len(trainer.seen)
    trainer.optimizer_step()
    assert len(trainer.seen) == before + 1
    return scaler, trainer.seen[-1]


def clipped(model: nn.Module, grads: dict[str, torch.Tensor], max_norm: float = 10.0) -> dict[str, torch.Tensor]:
    """`grads` after Ultralytics' `clip_grad_norm_(max_norm)` over all parameters, computed on copies."""
    copies = {n: nn.Parameter(torch.zeros_like(grads[n])) for n, _ in model.named_parameters()}
    for n, p in copies.items():
        p.grad = grads[n].clone()
    torch.nn.utils.clip_grad_norm_(list(copies.values()), max_norm=max_norm)
    return {n: p.grad for n, p in copies.items()}


def expected_grads(model, grads, prunable_names, strength) -> dict[str, torch.Tensor]:
    """g, plus strength * sign(gamma) on the prunable BatchNorm weights."""
    params = dict(model.named_parameters())
    out = {}
    for n, g in grads.items():
        out[n] = g.clone()
        if n in prunable_names:
            out[n].add_(torch.sign(params[n].detach()), alpha=strength)
    return out


def assert_grads_equal(seen, expected) -> None:
    """Every gradient seen at the step equals the expected one bit for bit."""
    assert seen.keys() == expected.keys()
    bad = [n for n in expected if not torch.equal(seen[n], expected[n])]
    assert not bad, f"{len(bad)} gradients differ from g + sr*nbs*sign(gamma), e.g. {bad[:5]}"


def test_prunable_bns_of_trainer_come_from_dependency_graph(hand_trainer):
    model = hand_trainer.model
    bns = hand_trainer.prunable_bns
    all_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, "no prunable BatchNorm found"
    assert [id(m) for m in bns] == [id(m) for m in prunable_batchnorms(model)]
    assert 0 < len(bns) < len(all_bns), "yolo11n has BatchNorms that must not be prunable (attention)"
    assert hand_trainer.prunable_bns is bns, "the prunable set must be found once and cached"


@pytest.mark.parametrize("sr, nbs", [(5e-4, 64), (2e-3, 8)])
def test_sparsity_term_added_once_per_step(synthetic_data, tmp_path, sr, nbs):
    trainer = make_hand_trainer(synthetic_data, tmp_path, sr=sr, nbs=nbs)
    model = trainer.model
    prunable = bn_weight_names(model, trainer.prunable_bns)
    all_bn_weights = bn_weight_names(model, [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert prunable and prunable < all_bn_weights

    grads = known_grads(model)  # far under the clip norm: clipping leaves them as they are
    gammas_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in all_bn_weights}
    expected = expected_grads(model, grads, prunable, sr * nbs)
    signs = torch.cat([torch.sign(gammas_before[n]) for n in sorted(prunable)])
    assert {-1.0, 0.0, 1.0} <= set(signs.tolist()), "test setup: sign(gamma) should take all three values"

    for _ in range(2):  # twice: the term is added once per call, never accumulated across steps
        scaler, seen = run_step(trainer, grads)
        assert scaler.calls == ["unscale_", "step", "update"]
        assert_grads_equal(seen, expected)  # non-prunable BN weights and all other params keep exactly g
        assert all(p.grad is None or not p.grad.any() for p in model.parameters()), "grads must be zeroed"
    for n, p in model.named_parameters():  # lr=0: the optimizer step did not move the weights
        if n in gammas_before:
            assert torch.equal(p.detach(), gammas_before[n])


def test_sparsity_term_added_after_clipping(synthetic_data, tmp_path):
    """A large sr is neither clipped itself nor shrinks the detection gradient (it is added after the clip)."""
    sr, nbs = 0.05, 64
    trainer = make_hand_trainer(synthetic_data, tmp_path, sr=sr, nbs=nbs)
    model = trainer.model
    prunable = bn_weight_names(model, trainer.prunable_bns)
    grads = {n: g * 200 for n, g in known_grads(model, seed=4).items()}  # a task gradient over the clip norm of 10
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    assert total > 20, "test setup: the task gradient must be clipped"
    n_channels = sum(dict(model.named_parameters())[n].numel() for n in prunable)
    assert sr * nbs * n_channels**0.5 > 10, "test setup: the term alone is over the clip norm"

    _, seen = run_step(trainer, grads)
    task = clipped(model, grads)  # clipped alone: the sparsity term does not count against the norm
    expected = expected_grads(model, task, prunable, sr * nbs)
    for n in expected:
        torch.testing.assert_close(seen[n], expected[n], rtol=1e-6, atol=1e-9, msg=f"gradient of {n}")
    other = next(n for n in grads if n not in prunable)
    shrunk = clipped(model, expected_grads(model, grads, prunable, sr * nbs))[other]  # the term clipped with g
    assert seen[other].abs().sum() > 3 * shrunk.abs().sum(), "the detection gradient must not shrink with sr"


def test_sparsity_term_follows_decayed_rate(synthetic_data, tmp_path):
    trainer = make_hand_trainer(synthetic_data, tmp_path, sr=1e-3, nbs=64, sr_decay=0.9)
    model = trainer.model
    trainer.epoch, trainer.epochs = 5, 10
    assert trainer.sparsity_rate() == pytest.approx(1e-3 * (1 - 0.45), rel=1e-12)
    trainer.epoch = 0
    assert trainer.sparsity_rate() == pytest.approx(1e-3, rel=1e-12)
    trainer.epoch = 5

    prunable = bn_weight_names(model, trainer.prunable_bns)
    grads = known_grads(model, seed=2)
    _, seen = run_step(trainer, grads)
    expected = expected_grads(model, grads, prunable, 1e-3 * 0.55 * 64)
    for n in expected:
        torch.testing.assert_close(seen[n], expected[n], rtol=1e-6, atol=1e-9, msg=f"gradient of {n}")


def test_sr_zero_adds_nothing(synthetic_data, tmp_path):
    trainer = make_hand_trainer(synthetic_data, tmp_path, sr=0.0)
    grads = known_grads(trainer.model, seed=3)
    scaler, seen = run_step(trainer, grads)
    assert scaler.calls == ["unscale_", "step", "update"]
    assert_grads_equal(seen, grads)


# ---------------------------------------------------------------------------------------------------------------------
# 2. end to end: gammas sink with sr > 0, stay put with sr = 0; statistics and gamma.png are written


@pytest.fixture(scope="module")
def sparse_runs(synthetic_data, runs_dir) -> dict[float, tuple[Path, SparsityTrainer]]:
    """Run folder and trainer of two 4-epoch trainings, identical but for sr=SPARSE_SR (with plots) and sr=0."""
    runs = {}
    for sr in (SPARSE_SR, 0.0):
        name = f"sparse_sr{sr}"
        model = YOLOPrune("yolov8n.yaml")
        # sr=0 alone would be Ultralytics' own training (no gamma columns): the control asks for our trainer
        model.train(trainer=SparsityTrainer, data=str(synthetic_data), sr=sr, project=str(runs_dir), name=name,
                    plots=sr > 0, **SPARSE_TRAIN)  # fmt: skip
        assert type(model.trainer) is SparsityTrainer
        assert model.trainer.save_dir == runs_dir / name
        runs[sr] = (runs_dir / name, model.trainer)
    return runs


def test_gamma_columns_in_results_csv(sparse_runs):
    for run, _ in sparse_runs.values():
        rows = read_results(run / "results.csv")
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
        for r in rows:
            assert set(GAMMA_KEYS) <= r.keys()
            assert 0 <= r["gamma/lt1e-3"] <= r["gamma/lt1e-2"] <= 1
            assert r["gamma/median"] >= 0 and r["gamma/mean"] >= 0


def test_gammas_sink_with_sr(sparse_runs):
    sparse = read_results(sparse_runs[SPARSE_SR][0] / "results.csv")
    plain = read_results(sparse_runs[0.0][0] / "results.csv")
    med = [r["gamma/median"] for r in sparse]
    assert med[0] > med[1] > med[2], f"median |gamma| must fall epoch over epoch with sr > 0: {med}"
    assert med[-1] < med[2]
    assert med[-1] < 0.5 * plain[-1]["gamma/median"], (med, [r["gamma/median"] for r in plain])
    assert sparse[-1]["gamma/mean"] < 0.5 * plain[-1]["gamma/mean"]
    assert sparse[-1]["gamma/lt1e-2"] > plain[-1]["gamma/lt1e-2"], "some channels must be driven to ~0"
    assert sparse[-1]["gamma/lt1e-2"] >= sparse[-1]["gamma/lt1e-3"]
    # without the L1 term the gammas (initialised at 1) barely move in 4 epochs
    assert all(0.9 < r["gamma/median"] < 1.1 for r in plain), [r["gamma/median"] for r in plain]


def test_gamma_stats_describe_the_trained_model(sparse_runs):
    """The last row of results.csv holds the statistics of the prunable gammas at the end of training."""
    trainer = sparse_runs[SPARSE_SR][1]
    last = read_results(sparse_runs[SPARSE_SR][0] / "results.csv")[-1]
    candidates = {"model": trainer.model, "ema": trainer.ema.ema}
    stats = {k: gamma_stats(prunable_batchnorms(m)) for k, m in candidates.items()}
    matches = [
        k for k, st in stats.items() if all(last[c] == pytest.approx(st[c], rel=1e-5, abs=1e-7) for c in GAMMA_KEYS)
    ]
    assert matches, f"results.csv {[last[c] for c in GAMMA_KEYS]} vs {stats}"


def test_gamma_png_written(sparse_runs):
    png = sparse_runs[SPARSE_SR][0] / "gamma.png"
    assert png.is_file()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 400
    assert img.std() > 10, "the heat-map looks blank"
    assert not (sparse_runs[0.0][0] / "gamma.png").exists(), "plots=False must not draw gamma.png"


def test_log_says_when_sparsity_is_not_happening(synthetic_data, tmp_path, logged):
    with logged(logging.WARNING) as warnings:
        model = YOLOPrune("yolov8n.yaml")
        model.train(data=str(synthetic_data), sr=1e-7, epochs=1, imgsz=64, batch=8, workers=0, val=False, plots=False,
                    optimizer="SGD", project=str(tmp_path), name="weak")  # fmt: skip
    lines = [w for w in warnings if "sparsity is not happening" in w]
    assert len(lines) == 1, warnings
    suggested = float(lines[0].split("; sr=")[1].split()[0])
    assert suggested > 100 * 1e-7, f"the suggested sr must be far stronger: {lines[0]}"
    trainer = model.trainer  # a median that fell by half is sparsity happening: nothing is said
    trainer._warned, trainer._first_median = False, 1.0
    with logged(logging.WARNING) as later:
        trainer.check_sparsity({"gamma/median": 0.5, "gamma/lt1e-2": 0.0})
        trainer._warned = False
        trainer.check_sparsity({"gamma/median": 0.99, "gamma/lt1e-2": 0.0})
    assert len([w for w in later if "not happening" in w]) == 1, "only the second call, where the median stays"


# ---------------------------------------------------------------------------------------------------------------------
# 3. sr=0 is plain Ultralytics training, bit for bit


def test_sr_zero_is_plain_ultralytics(synthetic_data, runs_dir):
    from ultralytics import YOLO

    args = dict(
        data=str(synthetic_data),
        epochs=2,
        imgsz=64,
        batch=8,
        workers=0,
        deterministic=True,
        seed=0,
        val=False,
        plots=False,
        amp=False,
        project=str(runs_dir),
        exist_ok=True,
    )
    plain = YOLO("yolov8n.yaml")
    plain.train(name="bitwise_ultralytics", **args)
    ours = YOLOPrune("yolov8n.yaml")
    ours.train(name="bitwise_prune", sr=0.0, **args)
    assert type(ours.trainer) is type(plain.trainer), "sr=0 is Ultralytics' own training, its own trainer"
    assert plain.trainer.save_dir != ours.trainer.save_dir

    def assert_same_state(a: dict, b: dict, what: str):
        assert a.keys() == b.keys(), what
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{what}: {len(diff)} tensors differ, e.g. {diff[:5]}"

    # the live float32 weights at the end of training
    assert_same_state(plain.trainer.model.state_dict(), ours.trainer.model.state_dict(), "trained model")
    # and the EMA saved in last.pt
    ckpts = [
        torch.load(t.trainer.last, map_location="cpu", weights_only=False) for t in (plain, ours)
    ]
    for key in ("ema", "model"):
        sds = [c[key].state_dict() if c.get(key) is not None else None for c in ckpts]
        assert (sds[0] is None) == (sds[1] is None)
        if sds[0] is not None:
            assert_same_state(sds[0], sds[1], f"last.pt[{key!r}]")
    assert ckpts[0]["epoch"] == ckpts[1]["epoch"]
    # and the same columns: no gamma statistics without sr
    cols = [read_results(t.trainer.csv)[-1].keys() for t in (plain, ours)]
    assert list(cols[1]) == list(cols[0]) and not set(GAMMA_KEYS) & set(cols[1])


# ---------------------------------------------------------------------------------------------------------------------
# 4. which BatchNorms are prunable


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def test_prunable_batchnorms(cfg):
    model = DetectionModel(cfg, nc=3, verbose=False)
    model.train()
    randomize_gammas(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    grad_flags = [p.requires_grad for p in model.parameters()]

    bns = prunable_batchnorms(model, imgsz=64)

    all_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, "no prunable BatchNorm found"
    assert all(isinstance(m, nn.BatchNorm2d) for m in bns)
    ids = [id(m) for m in bns]
    assert len(set(ids)) == len(ids), "duplicates"
    order = {id(m): i for i, m in enumerate(all_bns)}
    assert all(i in order for i in ids), "returned BatchNorms must be the model's own modules, not copies"
    assert [order[i] for i in ids] == sorted(order[i] for i in ids), "must be in module order"
    names = {id(m): n for n, m in model.named_modules()}
    assert "model.0.bn" in {names[i] for i in ids}, "the stem convolution's channels are prunable"

    attn = [m for m in model.modules() if isinstance(m, (Attention, AAttn))]
    attn_bns = {id(b) for a in attn for b in a.modules() if isinstance(b, nn.BatchNorm2d)}
    if cfg != "yolov8n.yaml":
        assert attn_bns, f"{cfg} is expected to hold attention blocks"
        assert len(bns) < len(all_bns)
    assert not attn_bns & set(ids), "BatchNorms inside attention layers are held whole"

    # the model is left as it was: same modules, same tensors, no twins, same mode and grad flags
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, tuple(TWINS.values())) for m in model.modules())
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == grad_flags


# ---------------------------------------------------------------------------------------------------------------------
# 5. gamma statistics


def make_bn(values) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(values))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(values, dtype=torch.float32))
    return bn


def test_gamma_stats_exact():
    bns = [make_bn([0.0, 0.005, 0.5, 1.0])]
    s = gamma_stats(bns)
    assert set(s) == set(GAMMA_KEYS)
    assert s["gamma/lt1e-2"] == 0.5
    assert s["gamma/lt1e-3"] == 0.25
    assert s["gamma/median"] == pytest.approx(0.005, rel=1e-6)  # torch.median: the lower of the two middle values
    assert s["gamma/mean"] == pytest.approx((0.005 + 0.5 + 1.0) / 4, rel=1e-6)


def test_gamma_stats_abs_over_several_layers():
    # |gamma| of all channels of all layers together: [0, .005, .5, 1] + [.0005, 2]
    s = gamma_stats([make_bn([0.0, 0.005, 0.5, 1.0]), make_bn([-0.0005, -2.0])])
    assert s["gamma/lt1e-2"] == pytest.approx(3 / 6)
    assert s["gamma/lt1e-3"] == pytest.approx(2 / 6)
    assert s["gamma/median"] == pytest.approx(0.005, rel=1e-6)
    assert s["gamma/mean"] == pytest.approx((0.005 + 0.5 + 1.0 + 0.0005 + 2.0) / 6, rel=1e-6)
    assert all(isinstance(v, float) for v in s.values())


def test_gamma_stats_empty():
    assert gamma_stats([]) == dict.fromkeys(GAMMA_KEYS, 0.0)


def test_gamma_histogram_bins():
    # bins are 0.1 wide in log10 from -4 to 1; the values sit at bin centres, plus some outside the range
    h = gamma_histogram([make_bn([0.0, 1e-6, 10**-2.95, -(10**-0.95), 10**0.05]), make_bn([-50.0])])
    assert len(h) == len(HIST_EDGES) - 1 == 50
    assert h.sum() == 6
    assert h[0] == 2, "0 and 1e-6 fall below 1e-4: first bin"
    assert h[-1] == 1, "|-50| is above 10: last bin"
    assert h[10] == h[30] == h[40] == 1
    assert h.sum() - h[[0, 10, 30, 40, 49]].sum() == 0


def test_sparsity_training_on_from_a_checkpoint_goes_on_from_its_training(synthetic_data, tmp_path):
    """`yolo train model=best.pt sr=...` continues the parent's training (its SGD near the rate it ended at, no
    warmup, mosaic as it ended) instead of restarting it; an Adam parent gives way to SGD (Adam rescales the L1 term)."""
    from ultralytics_prune.cfg.continuation import CONTINUE_LR_RISE, FALLBACK_KEYS
    from ultralytics_prune.checkpoint import save_checkpoint

    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    sgd = save_checkpoint(model, tmp_path / "sgd.pt", train_args={"optimizer": "SGD", "lr0": 0.02, "lrf": 0.01,
                                                                   "close_mosaic": 10})  # fmt: skip
    adam = save_checkpoint(model, tmp_path / "adam.pt", train_args={"optimizer": "AdamW", "lr0": 0.001, "lrf": 0.01,
                                                                     "close_mosaic": 0})  # fmt: skip
    keys = dict(data=str(synthetic_data), epochs=1, imgsz=64, batch=16, workers=0, plots=False, val=False,
                project=str(tmp_path), exist_ok=True, sr=1e-3)  # fmt: skip
    on = YOLOPrune(str(sgd))
    on.train(name="on", **keys)
    args = on.trainer.args
    assert (args.optimizer, args.warmup_epochs, args.warmup_bias_lr, args.mosaic) == ("SGD", 0.0, 0.0, 0.0)
    assert args.lr0 == pytest.approx(0.02 * 0.01 * CONTINUE_LR_RISE) and args.lr0 * args.lrf == pytest.approx(2e-4)
    from_adam = YOLOPrune(str(adam))
    from_adam.train(name="adam", **keys)
    args = from_adam.trainer.args
    assert (args.optimizer, args.lr0, args.lrf) == tuple(FALLBACK_KEYS[k] for k in ("optimizer", "lr0", "lrf"))
    assert args.mosaic == 1.0, "the parent ended with mosaic: so does the continuation"
    ckpt = sgd
    mine = YOLOPrune(str(ckpt))
    mine.train(name="mine", warmup_epochs=1.0, **keys)
    assert mine.trainer.args.warmup_epochs == 1.0, "a key the user sets wins"


def test_sparsity_training_says_once_when_accuracy_falls(logged):
    from types import SimpleNamespace

    from ultralytics_prune.patches.trainer import ACCURACY_FALL, SparsityMixin

    trainer = SimpleNamespace(args=SimpleNamespace(sr=1e-3), _best_map=0.0, _accuracy_warned=False)
    stats = {"gamma/median": 0.3}
    with logged(logging.WARNING) as warnings:
        for now in (0.50, 0.52, 0.52 * (1 - ACCURACY_FALL) + 0.01, 0.52 * (1 - ACCURACY_FALL) - 0.01, 0.1):
            SparsityMixin.check_accuracy(trainer, {"metrics/mAP50-95(B)": now}, stats)
    assert len(warnings) == 1 and "fell to 0.406 from 0.520" in warnings[0] and "sr=0.001" in warnings[0], warnings
