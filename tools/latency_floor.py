"""How much of a model's latency no choice of widths can remove, read off a `bench_latency.py` measurement.

    python tools/bench_latency.py parent.pt r25/pruned.pt r50/pruned.pt r75/pruned.pt pruned.pt --imgsz 320 \\
        --backends onnxruntime --rounds 100 --repeat 8 --out runs/floor
    python tools/latency_floor.py runs/floor/latency.json --line 0,1,2,3

The models named by `--line` are the parent and its uniform cuts (`yolo prune rate=R sensitivity=False epochs=0`:
every layer keeps the same share of its channels). Per backend and repeat they give a least-squares line
`ms = fixed + per_gmac * GMACs`. `fixed` is the time at zero MACs: what each node costs to run whatever its size
(dispatch, threads waking, layout reorders) and the parts of the graph that do not shrink. It caps what any cut can
realize: on the line, s times fewer MACs run in `fixed + (T0 - fixed) / s`, so the realization (speed-up / MACs
factor) of a cut with MACs factor s is at most `T0 / (fixed + (T0 - fixed) / s) / s` ("cap"). Every model is also read
against the line at its own MACs ("vs_line": the line's ms / the measured ms; above 1 its widths run faster than a
uniform cut of the same MACs, below 1 slower). So the shortfall of a pruned model splits into what its widths cost
(vs_line below 1: ours to fix) and what the runtime charges per node (the cap: no width policy removes it).

Each quantity is computed per repeat (the repeats of bench_latency are independent measurements) and given as the
median with the lowest and highest repeat. Prints a table and writes `floor.json` beside the input (or to `--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("backend", "model", "macs_G", "fixed_ms", "fixed_share", "realization", "cap", "vs_line", "vs_line_low",
           "vs_line_high")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the measurement file and the models on the line from `argv` or sys.argv."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("latency_json", help="latency.json written by tools/bench_latency.py (the parent first)")
    p.add_argument("--line", default="", help="indices of the parent and its uniform cuts, e.g. 0,1,2,3")
    p.add_argument("--out", default="", help="where to write floor.json (default: beside latency.json)")
    return p.parse_args(argv)


def fit_line(macs: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    """Least-squares `ms = fixed + per_gmac * macs`; returns (fixed, per_gmac)."""
    per_gmac, fixed = np.polyfit(macs, ms, 1)
    return float(fixed), float(per_gmac)


def read_floor(rows: list[dict], line: list[int]) -> list[dict]:
    """One row per backend and model: the line's fixed ms, the model's measured realization, the cap at its MACs
    factor and its time against the line, each the median over the repeats (vs_line with its lowest and highest)."""
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        models = [r for r in rows if r["backend"] == backend]
        macs = np.array([r["macs_G"] for r in models])
        repeats = np.array([[float(v) for v in str(r["repeat_medians_ms"]).split()] for r in models])  # model x rep
        fits = [fit_line(macs[line], repeats[line, j]) for j in range(repeats.shape[1])]
        for i, r in enumerate(models):
            factor = macs[0] / macs[i]
            fixed, realization, cap, vs_line = [], [], [], []
            for j, (f, k) in enumerate(fits):
                t0 = f + k * macs[0]  # the parent on the line, so the cap is the line's own
                fixed.append(f)
                realization.append(repeats[0, j] / repeats[i, j] / factor)
                cap.append(t0 / (f + (t0 - f) / factor) / factor)
                vs_line.append((f + k * macs[i]) / repeats[i, j])
            out.append({"backend": backend, "model": r["model"], "macs_G": float(macs[i]),
                        "fixed_ms": float(np.median(fixed)),
                        "fixed_share": float(np.median(fixed) / np.median(repeats[0])),
                        "realization": float(np.median(realization)), "cap": float(np.median(cap)),
                        "vs_line": float(np.median(vs_line)), "vs_line_low": float(min(vs_line)),
                        "vs_line_high": float(max(vs_line))})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Read, fit, print the table and write floor.json; exit status 2 with one line for input it cannot use."""
    args = parse_args(argv)
    file = Path(args.latency_json)
    if not file.is_file():
        print(f"latency_floor: {file} not found (pass the latency.json of tools/bench_latency.py)", file=sys.stderr)
        return 2
    try:
        rows = json.loads(file.read_text())["rows"]
        models = list(dict.fromkeys(r["model"] for r in rows))
        macs = {r["model"]: float(r["macs_G"]) for r in rows if "repeat_medians_ms" in r}
    except (ValueError, KeyError, TypeError):
        rows, models, macs = [], [], {}
    if not rows or len(macs) != len(models):
        print(f"latency_floor: {file} is not a latency.json of tools/bench_latency.py with per-repeat medians "
              f"(measure again with it)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        line = sorted({int(i) for i in args.line.split(",") if i.strip()})
    except ValueError:
        line = []
    if len(line) < 2 or line[0] != 0 or line[-1] >= len(models) or not all(np.isfinite(macs[models[i]]) for i in line):
        print(f"latency_floor: --line needs the parent (0) and at least one uniform cut among the {len(models)} "
              f"checkpoints measured (.pt files, whose MACs are counted; e.g. --line 0,1,2)", file=sys.stderr)
        return 2
    table = read_floor(rows, line)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in table:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |")
    out = Path(args.out) if args.out else file.with_name("floor.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": str(file), "line": line, "rows": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
