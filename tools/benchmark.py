"""Side-by-side accuracy and speed of the pruning recipes on the same data and the same epoch budget.

    python tools/benchmark.py --data D --model best.pt --rate 0.5 --epochs N --imgsz S --out DIR

Rows (each given `--epochs` epochs of training in all, on the same data):
  base      the input checkpoint as it is
  continue  the input checkpoint, unpruned, fine-tuned exactly as `prune` is (the pruning loop's own fine-tune, the
            same `--steps` fine-tunes of epochs/steps epochs) with nothing cut: the control every row is read against
  prune     `yolo prune` with its defaults, `--steps` steps of epochs/steps fine-tune epochs
  attention the same with `attention=prune` (attention heads cut too)
  latency   the same with `latency_aware=True` (channels ranked by importance per millisecond on onnxruntime)
  distill   the same with the input checkpoint as teacher (`distill=True`)
  slim      sparsity training from the input (`sr`, half the epochs), `yolo slim` at the rate, fine-tune (the rest)
  scratch   the architecture `prune` ended with, re-initialised and trained from scratch for `--epochs`

`--int8` adds, for every measured row, `<row>-int8`: its ONNX quantized to INT8 by onnxruntime static quantization,
calibrated on 64 training images (`ultralytics_prune.measure.quantize`), validated by Ultralytics from the ONNX file and
timed with the others; `vs_float` is its task mAP50-95 minus that of the same row's float ONNX validated the same way
(Ultralytics validates an ONNX file at batch 1 on square letterboxed images, a .pt on rectangular batches).

Writes benchmark.csv, benchmark.json, benchmark.md and benchmark.png (mAP50-95 against MACs and against measured
latency) in `--out` and prints the table: MACs, parameters, box mAP50 and mAP50-95, the task's own mAP50-95 (mask
or pose; the box one for detect and OBB), `vs_continue` (that mAP50-95 minus the `continue` row's), onnxruntime CPU
latency (each model alone in its own process, medians) and wall time per row; for every row the pruning loop
trained, `first_epoch` (the task's mAP50-95 after the first fine-tune epoch) and `shock` (the deepest fall of any of
its fine-tunes, sparse epochs included, below the model it was given: a re-learn shows as a large negative number). A row that fails is reported in its `error` column; the
others go on.

On top of the table stands the convergence check of the input: its own `results.csv` (beside `weights/`) read for the
task's mAP50-95 column; a parent whose best value of its last 20 % of epochs is more than 1 point above its best
before them is still learning, and every trained row then measures training as well as pruning.

`--seeds N` trains every row but `base` with the seeds 0..N-1: the table gives the mean over the seeds and the spread
(max - min) of the task's mAP50-95 and of `vs_continue` (each seed's row minus the same seed's `continue` row);
benchmark.json keeps every seed's numbers under `runs`.
"""

from __future__ import annotations

import argparse
import json
import keyword
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ultralytics_prune.recipes.loop import PruneRun  # noqa: E402

ROWS = ("base", "continue", "prune", "attention", "latency", "distill", "slim", "scratch")
METRIC = "task_mAP50-95"  # what `vs_continue`, the spread and the convergence check read
SPREAD = (METRIC, "vs_continue")  # reported as the mean and the spread (max - min) over the seeds
COLUMNS = ("row", "seeds", "macs_G", "params_M", "mAP50", "mAP50-95", METRIC, f"{METRIC}_spread", "vs_continue",
           "vs_continue_spread", "first_epoch", "shock", "vs_float", "onnx_ms", "speedup", "train_epochs", "wall_s",
           "error")  # fmt: skip
CONVERGENCE_TAIL = 0.2  # the share of the parent's last epochs the convergence check looks at
CONVERGENCE_RISE = 0.01  # a rise of mAP50-95 over them above this (1 point) means the parent is still learning
RESULT_COLUMNS = ("metrics/mAP50-95(M)", "metrics/mAP50-95(P)", "metrics/mAP50-95(B)")  # the task's own before box


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's options from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset yaml")
    p.add_argument("--model", required=True, help="trained checkpoint (the base row)")
    p.add_argument("--rate", type=float, default=0.5, help="channel pruning rate of prune, distill and slim")
    p.add_argument("--epochs", type=int, default=20, help="training epochs each row gets in all")
    p.add_argument("--steps", type=int, default=2, help="iterative pruning steps of prune and distill")
    p.add_argument("--speedup", type=float, default=0.0,
                   help="prune rows stop at this speed-up instead of at --rate (see --speedup-by)")
    p.add_argument("--speedup-by", choices=("latency", "macs"), default="latency",
                   help="what --speedup divides: onnxruntime CPU latency, or MACs (one end point for every prune row)")
    p.add_argument("--imgsz", type=int, default=640, help="image size")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--sr", type=float, default=0.005, help="sparsity strength of the slim row's sparsity training")
    p.add_argument("--seeds", type=int, default=1, help="train every row but base with the seeds 0..N-1")
    p.add_argument("--int8", action="store_true", help="add an INT8 (onnxruntime static quantization) row per row")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--latency-repeats", type=int, default=5,
                   help="time every ONNX file this many times, alone, in alternated order (median of all calls)")
    p.add_argument("--out", default="runs/benchmark", help="output folder")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: give at least 1")
    if unknown := sorted(set(row_names(args.rows)) - set(ROWS)):
        p.error(f"--rows: unknown rows {unknown}, choose from {','.join(ROWS)}")
    return args


def row_names(rows: str) -> list[str]:
    """The row names of a comma-separated `--rows`."""
    return [r.strip() for r in rows.split(",") if r.strip()]


class ContinueRun(PruneRun):
    """The pruning loop with steps that cut nothing: the parent fine-tuned step by step exactly as a prune run is."""

    mode = "continue"
    result_name = "continued"

    @property
    def n_steps(self) -> int:
        """`iterative_steps`, as many fine-tunes as the prune rows get."""
        return self.args.iterative_steps

    def remove(self, step: int) -> dict:
        """Remove nothing."""
        return {"ratio": 0.0, "removed": 0.0}


class Benchmark:
    """Runs the rows one after the other into `out`, once per seed (`base` once), then measures them all alike."""

    def __init__(self, args: argparse.Namespace):
        """Keep the options; every run goes under `args.out`."""
        self.args = args
        self.out = Path(args.out).resolve()
        self.common = dict(data=args.data, imgsz=args.imgsz, batch=args.batch, workers=2, plots=False, exist_ok=True)
        self.seed = 0  # the seed of the rows being trained
        self.checkpoints: dict[str, Path] = {}  # of the current seed

    def run_name(self, name: str) -> str:
        """The run folder of a row: its name, with the seed appended when several seeds run."""
        return name if self.args.seeds == 1 else f"{name}_seed{self.seed}"

    def train_keys(self, name: str) -> dict:
        """The keys of every training run: the data, the seed, and where it writes (`--out`/`name`)."""
        return {**self.common, "seed": self.seed, "project": str(self.out), "name": self.run_name(name)}

    def loop_keys(self, name: str, **keys) -> dict:
        """The keys of a run of the pruning loop from the input: `--steps` fine-tunes of epochs/steps epochs each,
        no stop rule (plus `keys`)."""
        return {**self.train_keys(name), "model": self.args.model, "iterative_steps": self.args.steps,
                "epochs": self.args.epochs // self.args.steps, "max_map_drop": 1.0, **keys}  # fmt: skip

    def base(self) -> Path:
        """The input checkpoint itself (no training)."""
        return Path(self.args.model)

    def continue_(self) -> Path:
        """The input, unpruned, through the pruning loop's own fine-tune with the prune rows' keys and recipe (no
        BatchNorm re-estimation: nothing was cut; no ONNX check: the benchmark exports every row itself)."""
        from ultralytics_prune.cfg import get_prune_cfg, recipe_overrides

        keys = recipe_overrides(self.loop_keys("continue", recalibrate=0, onnx=False))
        return ContinueRun(get_prune_cfg(overrides={**keys, "mode": "prune"}))()

    def prune(self, name: str = "prune", **keys) -> Path:
        """`yolo prune` with its defaults at `rate`, `steps` steps, the epochs spread evenly over them (plus `keys`)."""
        from ultralytics_prune.model import run_recipe

        goal = {"speedup": self.args.speedup, "speedup_by": self.args.speedup_by} if self.args.speedup else {}
        return run_recipe("prune", self.loop_keys(name, rate=self.args.rate, **goal, **keys))

    def attention(self) -> Path:
        """`prune` with `attention=prune` (the heads of attention blocks cut too)."""
        return self.prune("attention", attention="prune")

    def latency(self) -> Path:
        """`prune` with `latency_aware=True` (one ranking of importance per millisecond across layers)."""
        return self.prune("latency", latency_aware=True)

    def distill(self) -> Path:
        """`prune` with the input checkpoint as teacher."""
        return self.prune("distill", distill=True)

    def slim(self) -> Path:
        """Sparsity training from the input for half the epochs, then `yolo slim` and fine-tuning for the rest."""
        from ultralytics_prune import YOLOPrune
        from ultralytics_prune.model import run_recipe

        sparse_epochs = self.args.epochs // 2
        model = YOLOPrune(self.args.model)
        model.train(**self.train_keys("slim_sparsity"), epochs=sparse_epochs, sr=self.args.sr, optimizer="SGD")
        return run_recipe("slim", {**self.train_keys("slim"), "model": str(model.trainer.last), "rate": self.args.rate,
                                   "epochs": self.args.epochs - sparse_epochs, "max_map_drop": 1.0})  # fmt: skip

    def scratch(self) -> Path:
        """The pruned architecture with fresh weights, trained from scratch for all the epochs."""
        import torch.nn as nn

        from ultralytics_prune import YOLOPrune
        from ultralytics_prune.checkpoint import load_model, save_checkpoint

        if "prune" not in self.checkpoints:
            raise RuntimeError("needs the prune row's architecture: run the prune row first")
        model = load_model(self.checkpoints["prune"])
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()
        head = model.model[-1]
        if hasattr(head, "bias_init"):
            head.bias_init()
        start = save_checkpoint(model, self.out / f"{self.run_name('scratch')}_init.pt",
                                train_args={"data": self.args.data})  # fmt: skip
        trained = YOLOPrune(str(start))
        trained.train(**self.train_keys("scratch"), epochs=self.args.epochs)
        return Path(trained.trainer.best)

    def run(self) -> list[dict]:
        """Run and measure every requested row, the trained ones once per seed; return one dict per run.

        A failing run keeps its error and the others go on.
        """
        from ultralytics.utils import TQDM

        names = row_names(self.args.rows)
        jobs = [("base", None)] if "base" in names else []
        jobs += [(name, seed) for seed in range(self.args.seeds) for name in names if name != "base"]
        runs = [self.run_row(name, seed) for name, seed in TQDM(jobs, desc="benchmark rows")]
        if self.args.int8:
            runs += [self.int8(r) for r in TQDM([r for r in runs if r.get("onnx")], desc="benchmark INT8 rows")]
        self.add_latency(runs)
        add_vs_continue(runs)
        return runs

    def run_row(self, name: str, seed: int | None) -> dict:
        """Train (with `seed`) and measure one row; its error, if any, goes into the returned dict."""
        from ultralytics.utils import LOGGER

        if seed is not None and seed != self.seed:  # a new seed: its rows build on each other only
            self.seed, self.checkpoints = seed, {}
        t = time.perf_counter()
        run = {"row": name, "seed": seed, "train_epochs": 0 if name == "base" else self.args.epochs, "error": ""}
        try:
            self.checkpoints[name] = getattr(self, f"{name}_" if keyword.iskeyword(name) else name)()
            run.update(self.measure(self.checkpoints[name]))
            run.update(finetune_shock(self.checkpoints[name]))
        except Exception as e:  # a failing row is reported, not fatal
            LOGGER.warning(f"benchmark: row '{name}' (seed {seed}) failed: {type(e).__name__}: {e}")
            run["error"] = f"{type(e).__name__}: {e}"
        run["wall_s"] = time.perf_counter() - t
        return run

    def measure(self, checkpoint: Path) -> dict:
        """MACs, parameters and validation mAP of a checkpoint, and its ONNX export (latency is measured later)."""
        from ultralytics import YOLO

        from ultralytics_prune.checkpoint import load_model
        from ultralytics_prune.measure.report import count_macs_params, export_onnx

        macs, params = count_macs_params(load_model(checkpoint), self.args.imgsz)
        metrics = YOLO(str(checkpoint)).val(**self.common, project=str(self.out / "val"), name=checkpoint.stem,
                                           verbose=False)  # fmt: skip
        copy = self.out / "onnx" / f"{len(list((self.out / 'onnx').glob('*.pt')))}_{checkpoint.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(checkpoint.read_bytes())  # export next to a copy, never beside the user's file
        own = getattr(metrics, "seg", None) or getattr(metrics, "pose", None) or metrics.box  # mask, pose, else box
        return {"macs_G": macs / 1e9, "params_M": params / 1e6, "mAP50": float(metrics.box.map50),
                "mAP50-95": float(metrics.box.map), METRIC: float(own.map),
                "onnx": str(export_onnx(copy, self.args.imgsz))}  # fmt: skip

    def validate_onnx(self, onnx: Path) -> tuple[float, float, float]:
        """Box mAP50, box mAP50-95 and the task's own mAP50-95 of an ONNX file, validated by Ultralytics."""
        from ultralytics import YOLO

        metrics = YOLO(str(onnx)).val(**self.common, project=str(self.out / "val"), name=onnx.stem, verbose=False)
        own = getattr(metrics, "seg", None) or getattr(metrics, "pose", None) or metrics.box
        return float(metrics.box.map50), float(metrics.box.map), float(own.map)

    def int8(self, run: dict) -> dict:
        """The INT8 row of a measured row: its ONNX quantized (see the module doc), validated beside the float ONNX."""
        from ultralytics.utils import LOGGER

        from ultralytics_prune.measure.quantize import calibration_batches, quantize_int8

        t = time.perf_counter()
        row = {"row": f"{run['row']}-int8", "seed": run["seed"], "train_epochs": run["train_epochs"], "error": ""}
        try:
            onnx = quantize_int8(run["onnx"], calibration_batches(self.args.data, self.args.imgsz))
            float_map = self.validate_onnx(Path(run["onnx"]))[2]
            map50, map50_95, own = self.validate_onnx(onnx)
            row.update({"macs_G": run["macs_G"], "params_M": run["params_M"], "mAP50": map50, "mAP50-95": map50_95,
                        METRIC: own, "vs_float": own - float_map, "onnx": str(onnx)})  # fmt: skip
        except Exception as e:  # a failing row is reported, not fatal
            LOGGER.warning(f"benchmark: INT8 of row '{run['row']}' (seed {run['seed']}) failed: {type(e).__name__}: {e}")
            row["error"] = f"{type(e).__name__}: {e}"
        row["wall_s"] = time.perf_counter() - t
        return row

    def add_latency(self, runs: list[dict]) -> None:
        """onnxruntime CPU latency of every measured run (each alone in its own process), and the speed-up over base."""
        from ultralytics_prune.measure.latency import onnx_latencies

        measured = [r for r in runs if r.get("onnx")]
        for r, ms in zip(measured, onnx_latencies([r["onnx"] for r in measured], self.args.imgsz, rounds=100,
                                                 repeats=self.args.latency_repeats)):
            r["onnx_ms"] = ms
        base = next((r for r in measured if r["row"] == "base"), None)
        for r in measured:
            r["speedup"] = base["onnx_ms"] / r["onnx_ms"] if base else float("nan")


def finetune_shock(checkpoint: Path) -> dict:
    """How far the fine-tunes of a run of the pruning loop fell below the model each was given, from the run's CSV
    (`<run>/<mode>_results.csv` for `<run>/weights/<result>.pt`): `first_epoch`, the task's mAP50-95 after the first
    fine-tune epoch of step 1, and `shock`, the lowest of every step's `shock` and `sparse_shock` (a re-learn shows as
    a large negative number). Nothing for a checkpoint that no run of the loop wrote."""
    from ultralytics_prune.files import read_csv

    run = Path(checkpoint).resolve().parent.parent
    files = sorted(run.glob("*_results.csv"))
    rows = read_csv(files[0]) if files else []
    first = [v for r in rows[1:2] for k, v in r.items() if k.endswith("_first") and isinstance(v, float)]
    shocks = [v for r in rows[1:] for k, v in r.items() if k in ("shock", "sparse_shock") and isinstance(v, float)
              and not math.isnan(v)]  # fmt: skip
    return {**({"first_epoch": first[-1]} if first else {}), **({"shock": min(shocks)} if shocks else {})}


def add_vs_continue(runs: list[dict]) -> None:
    """Give every measured run `vs_continue`: its task mAP50-95 minus the `continue` run's of the same seed (base,
    trained with none, against the mean of all of them); nothing when there is no such `continue` run."""
    control = {r["seed"]: r[METRIC] for r in runs if r["row"] == "continue" and METRIC in r}
    for r in runs:
        matched = [control[r["seed"]]] if r["seed"] in control else list(control.values()) if r["seed"] is None else []
        if METRIC in r and matched:
            r["vs_continue"] = r[METRIC] - sum(matched) / len(matched)


def summarize(runs: list[dict]) -> list[dict]:
    """One table row per benchmark row: the mean of each number over its measured seeds, the spread (max - min) of
    `SPREAD`, how many seeds were measured and the errors of those that failed."""
    table = []
    for name in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == name]
        good = [r for r in mine if not r["error"]]
        row = {"row": name, "seeds": len(good), "train_epochs": mine[0]["train_epochs"],
               "error": "; ".join(f"seed {r['seed']}: {r['error']}" if r["seed"] is not None else r["error"]
                                  for r in mine if r["error"])}  # fmt: skip
        for key in {k for r in good for k, v in r.items() if isinstance(v, float)}:
            values = [r[key] for r in good if key in r]
            row[key] = sum(values) / len(values)
            if key in SPREAD:
                row[f"{key}_spread"] = max(values) - min(values)
        table.append(row)
    return table


def parent_convergence(checkpoint: str | Path) -> dict:
    """Whether the parent was still learning when it was saved, from its own `results.csv` (`<run>/results.csv` for
    `<run>/weights/best.pt`, else beside the checkpoint).

    The task's mAP50-95 column (mask, pose, else box: the box column for detect and OBB) is read; the parent is
    converged when the best value of its last `CONVERGENCE_TAIL` of epochs is at most `CONVERGENCE_RISE` above the
    best value before them.

    Returns:
        (dict): `results_csv` (the file looked for), `converged` (None when it could not be judged), `message` (one
            line for the top of the table) and, when judged, `column`, `epochs`, `tail_epochs`, `best_before`,
            `best_tail` and `rise`.
    """
    from ultralytics_prune.files import read_csv

    folder = Path(checkpoint).resolve().parent
    file = (folder.parent if folder.name == "weights" else folder) / "results.csv"
    verdict = {"results_csv": str(file), "converged": None}
    if not file.is_file():
        return {**verdict, "message": f"parent convergence not checked: no results.csv beside it ({file})"}
    epochs = [{k.strip(): v for k, v in r.items()} for r in read_csv(file)]  # older Ultralytics pads the names
    column = next((c for c in RESULT_COLUMNS if epochs and c in epochs[0]), None)
    if column is None or len(epochs) < 2:
        return {**verdict, "message": f"parent convergence not checked: {file} has no mAP50-95 column or fewer "
                                      f"than 2 epochs"}  # fmt: skip
    values = [float(r[column]) for r in epochs]
    tail = max(1, math.ceil(len(values) * CONVERGENCE_TAIL))
    before, last = max(values[:-tail]), max(values[-tail:])
    converged = last - before <= CONVERGENCE_RISE
    state = "converged" if converged else "NOT converged, still rising"
    message = (f"parent {state}: best {column} {before:.4f} in epochs 1-{len(values) - tail}, {last:.4f} in the "
               f"last {tail} of {len(values)} ({100 * (last - before):+.1f} points, limit "
               f"{100 * CONVERGENCE_RISE:.0f})")  # fmt: skip
    if not converged:
        message += "; every trained row measures training as well as pruning"
    return {**verdict, "converged": converged, "message": message, "column": column, "epochs": len(values),
            "tail_epochs": tail, "best_before": before, "best_tail": last, "rise": last - before}  # fmt: skip


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (the numbers rounded for reading)."""

    def cell(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summary_lines(rows: list[dict], imgsz: int) -> list[str]:
    """One line per measured row against base: mAP50-95, fewer MACs, speed-up, and `vs_continue` when there is one."""
    base = next((r for r in rows if r["row"] == "base" and r["seeds"]), None)
    lines = []
    for r in rows:
        if base and r is not base and r["seeds"]:
            fewer = base["macs_G"] / r["macs_G"]
            line = (f"{r['row']}: mAP50-95 {base['mAP50-95']:.3f} -> {r['mAP50-95']:.3f} with x{fewer:.2f} fewer "
                    f"MACs, x{r['speedup']:.2f} faster (onnxruntime CPU, {imgsz} px)")  # fmt: skip
            if "vs_continue" in r:
                line += f", {100 * r['vs_continue']:+.1f} points against continue"
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write its files and print the table; exit status 1 when any run failed."""
    args = parse_args(argv)
    from ultralytics.utils import LOGGER

    from ultralytics_prune.measure.plots import plot_benchmark
    from ultralytics_prune.files import write_csv

    convergence = parent_convergence(args.model)
    (LOGGER.info if convergence["converged"] is not False else LOGGER.warning)(f"benchmark: {convergence['message']}")
    bench = Benchmark(args)
    bench.out.mkdir(parents=True, exist_ok=True)
    runs = bench.run()
    rows = summarize(runs)
    table = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    write_csv(table, bench.out / "benchmark.csv")
    report = {"args": vars(args), "convergence": convergence, "rows": rows, "runs": runs}
    (bench.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    md = f"{convergence['message']}\n\n{markdown_table(table)}"
    (bench.out / "benchmark.md").write_text(md)
    plot_benchmark(rows, bench.out / "benchmark.png")
    print(md)
    print("\n".join(summary_lines(rows, args.imgsz)))
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
