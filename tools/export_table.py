"""Export table: pruned and slimmed models through every Ultralytics exporter, each result run and compared with PyTorch.

    YOLO_OFFLINE=1 OMP_NUM_THREADS=1 python tools/export_table.py --out runs/export_table

For each model (built from Ultralytics' yaml, nothing downloads) on a small synthetic set of its task: `yolo train
sr=0.001 epochs=1`, then `prune` (rate 0.5, one step, no fine-tune) and `slim` (rate 0.3, no fine-tune) of that
checkpoint. Each pruned / slimmed checkpoint then goes through every format of `export_formats()`, each export in its
own subprocess with a timeout (one hang or crash does not stop the table), in a folder of its own. Where the export
worked, the same subprocess loads the result with Ultralytics (`AutoBackend`, and `YOLO(file).predict` on one image)
and compares its raw output on a fixed input with the `.pt` checkpoint's: the largest absolute difference over the
largest absolute reference value ("max rel diff"), the worst over the model's outputs. End-to-end outputs (YOLO26)
are matched row by row where the runtime ordered tied detections differently.

Writes export_table.json and export_table.md into --out; a run with --formats/--models adds to what is already there
(rows with the same model, kind and format are replaced). Packages an exporter needs are not installed by this script:
install them with pip first (see README's export table); Ultralytics' own auto-install needs its online check, which
fails on a machine that reaches only a package registry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"yolov8n": "detect", "yolo11n": "detect", "yolo26n": "detect", "yolov8n-seg": "segment"}
KINDS = {"pruned": ("prune", "pruned.pt"), "slimmed": ("slim", "slimmed.pt"), "parent": ("train", "last.pt")}
NAMES = {"rknn": "rk3588", "qnn": "75", "ascend": "Ascend310B1"}  # formats that need a target `name`
RUNNABLE_HINT = {"coreml": "CoreML runs only on macOS", "coreai": "the Core AI runtime runs only on macOS 26+",
                 "engine": "TensorRT runs only on an NVIDIA GPU"}  # exported here, run elsewhere
COLUMNS = ("model", "kind", "format", "export_ok", "export_s", "runtime_ran", "max_rel_diff", "error")


def one_line(text: str, limit: int = 160) -> str:
    """The first non-empty line of `text`, cut to `limit` characters."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def formats() -> list[str]:
    """Every export format Ultralytics lists, except PyTorch itself."""
    from ultralytics.engine.exporter import export_formats

    return [f for f in export_formats()["Argument"] if f != "-"]


def export_kwargs(fmt: str, imgsz: int, data: str) -> dict:
    """The export arguments for `fmt`: CPU, our image size, our data set where the format takes one (INT8 calibration)
    and a target name where the format needs one."""
    from ultralytics.engine.exporter import export_formats

    table = export_formats()
    allowed = dict(zip(table["Argument"], table["Arguments"]))[fmt]
    kw = {"format": fmt, "imgsz": imgsz, "device": "cpu", "verbose": False}
    if "data" in allowed:
        kw["data"] = data
    if fmt in NAMES:
        kw["name"] = NAMES[fmt]
    return kw


# ---------------------------------------------------------------------------------------------------------------------
# the worker: one format of one checkpoint, in its own process


def flat(y) -> list:
    """The tensors / arrays of a (nested) model output, as float64 numpy arrays."""
    import numpy as np
    import torch

    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [a for x in y for a in flat(x)]
    if isinstance(y, torch.Tensor):
        return [y.detach().cpu().double().numpy()]
    if isinstance(y, np.ndarray):
        return [y.astype(np.float64)]
    return []


def rel_diff(ref: list, out: list) -> tuple[float | None, str]:
    """The largest |out - ref| / max|ref| over the outputs of `out`, each matched to the first reference output of
    its shape; end-to-end detections (B, N, 6+) whose order differs are matched row by row. Returns (diff, note)."""
    import numpy as np

    worst, notes = 0.0, []
    for a in out:
        same = [r for r in ref if r.shape == a.shape]
        if not same:
            return None, f"no reference output of shape {list(a.shape)} (reference: {[list(r.shape) for r in ref]})"
        r = same[0]
        scale = max(float(np.abs(r).max()), 1e-6)
        d = float(np.abs(a - r).max()) / scale
        if d > 1e-2 and a.ndim == 3 and 6 <= a.shape[2] < a.shape[1]:  # end-to-end rows: (x1, y1, x2, y2, score, cls)
            floor = float(r[..., 4].min()) + 1e-3  # rows clearly above the top-k cut, which ties may move
            m = 0.0
            for ab, rb in zip(a, r):
                rows = ab[ab[:, 4] > floor]
                if len(rows):
                    m = max(m, float(np.abs(rows[:, None, :] - rb[None]).max(-1).min(-1).max()))
            d, _ = m / scale, notes.append("end-to-end rows matched by nearest row")
        worst = max(worst, d)
    return worst, "; ".join(notes)


def openvino_f32(folder: str, im, ref: list) -> float:
    """The max rel diff of an OpenVINO export compiled with INFERENCE_PRECISION_HINT=f32 (Ultralytics takes the
    plugin's default, bf16 on CPUs that have it)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.compile_model(core.read_model(str(next(Path(folder).glob("*.xml")))), "CPU",
                               {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    out = model(im.numpy())
    return rel_diff(ref, [np.asarray(out[o], dtype=np.float64) for o in model.outputs])[0]


def worker(spec: dict) -> None:
    """Export `spec['ckpt']` to `spec['format']`, run it, compare with the checkpoint; results go to spec['result']."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    result = Path(spec["result"])
    row = {"export_ok": False, "runtime_ran": False}

    def save(**kw):
        row.update(kw)
        result.write_text(json.dumps(row))

    from ultralytics import YOLO

    t = time.time()
    try:
        f = YOLO(spec["ckpt"]).export(**spec["kwargs"])
    except BaseException as e:  # noqa: BLE001 (SystemExit too: some exporters exit on a missing tool)
        return save(export_s=round(time.time() - t, 1), error=f"{type(e).__name__}: {one_line(e)}")
    if not f or not Path(f).exists():
        return save(export_s=round(time.time() - t, 1), error=f"exporter returned {f!r}")
    save(export_ok=True, export_s=round(time.time() - t, 1), file=str(f))

    fmt = spec["kwargs"]["format"]
    if fmt in RUNNABLE_HINT:
        return save(error=RUNNABLE_HINT[fmt])
    try:
        from ultralytics.nn.autobackend import AutoBackend

        im = torch.from_numpy(np.load(spec["input"])).float()
        ref = flat(AutoBackend(spec["ckpt"], device=torch.device("cpu"), verbose=False)(im))
        out = flat(AutoBackend(f, device=torch.device("cpu"), verbose=False)(im))
        d, note = rel_diff(ref, out)
        if fmt == "openvino":  # OpenVINO's CPU plugin runs bf16 where the CPU has it (AMX, AVX512-BF16): f32 too
            note = "; ".join(filter(None, [note, f"f32 precision hint: {openvino_f32(f, im, ref):.1e}"]))
        YOLO(f, task=spec["task"]).predict(spec["image"], imgsz=spec["kwargs"]["imgsz"], device="cpu", verbose=False)
        save(runtime_ran=True, max_rel_diff=d, error=note or None)
    except BaseException as e:  # noqa: BLE001 (the row records any failure)
        save(error=f"runtime: {type(e).__name__}: {one_line(e)}")


# ---------------------------------------------------------------------------------------------------------------------
# the driver


def make_checkpoints(out: Path, names: list[str], imgsz: int) -> dict:
    """Train (one epoch), prune and slim each model; {(model, kind): (checkpoint, task, data, image)}."""
    from tools.make_dataset import make_synthetic_dataset
    from ultralytics_prune.cli import entrypoint
    from ultralytics_prune.model import run_recipe

    made = {}
    for name in names:
        task = MODELS[name]
        data = make_synthetic_dataset(out / f"data-{task}", n_train=16, n_val=8, imgsz=imgsz, task=task)
        image = str(min((Path(data).parent / "images" / "val").glob("*.jpg")))
        common = {"data": str(data), "imgsz": imgsz, "batch": 8, "workers": 0, "exist_ok": True, "plots": False}
        trained = out / "train" / name / "weights" / "last.pt"
        if not trained.exists():
            entrypoint(f"yolo train model={name}.yaml epochs=1 sr=0.001 seed=0 deterministic=True "
                       + " ".join(f"{k}={v}" for k, v in common.items()) + f" project={out / 'train'} name={name}")  # fmt: skip
        for kind, (mode, file) in KINDS.items():
            ckpt = out / mode / name / "weights" / file
            if not ckpt.exists() and mode != "train":
                keys = {"rate": 0.5, "iterative_steps": 1} if mode == "prune" else {"rate": 0.3}
                ckpt = Path(run_recipe(mode, {"model": str(trained), **keys, "epochs": 0, **common,
                                               "project": str(out / mode), "name": name}))  # fmt: skip
            made[(name, kind)] = (ckpt, task, str(data), image)
    return made


def fixed_input(image: str, imgsz: int, file: Path) -> str:
    """The image as the model's input tensor (1, 3, imgsz, imgsz), 0..1, RGB, letterboxed; saved as .npy."""
    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox

    im = LetterBox((imgsz, imgsz), auto=False)(image=cv2.imread(image))[..., ::-1]
    np.save(file, np.ascontiguousarray(im.transpose(2, 0, 1))[None].astype(np.float32) / 255)
    return str(file)


def run_format(ckpt: Path, task: str, data: str, image: str, fmt: str, folder: Path, imgsz: int, timeout: int) -> dict:
    """One export (and its check) in a fresh process, in `folder`, with a timeout."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    local = folder / ckpt.name
    shutil.copy2(ckpt, local)  # the exporter writes beside the checkpoint; each format gets its own folder
    spec = {"ckpt": str(local), "task": task, "image": image, "result": str(folder / "result.json"),
            "input": fixed_input(image, imgsz, folder / "input.npy"), "kwargs": export_kwargs(fmt, imgsz, data)}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "YOLO_OFFLINE": "1"}
    t = time.time()
    with open(folder / "log.txt", "w") as log:
        try:
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                               check=False, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)  # fmt: skip
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    res = Path(spec["result"])
    row = json.loads(res.read_text()) if res.exists() else {"export_ok": False, "runtime_ran": False}
    if rc == "timeout":
        row["error"] = f"timed out after {timeout} s" + (f" ({row['error']})" if row.get("error") else "")
    elif rc != 0 and not row.get("error"):
        row["error"] = f"process exited {rc}: {one_line(last_error(folder / 'log.txt'))}"
    row.setdefault("export_s", round(time.time() - t, 1))
    if row.get("error") not in RUNNABLE_HINT.values():  # the export worked, its runtime is not on this machine
        row["error"] = explain(row.get("error"), folder / "log.txt")
    return row


def last_error(log: Path) -> str:
    """The last line of a log that looks like an error."""
    lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()]
    bad = [s for s in lines if any(w in s for w in ("Error", "error", "failed", "failure", "❌"))]
    return (bad or lines or [""])[-1]


def explain(error: str | None, log: Path) -> str | None:
    """`error`, with the reason the log gives where it is one this machine cannot help (a missing package that
    Ultralytics' auto-install skipped offline, a download from outside the package registry)."""
    if not error:
        return error
    text = log.read_text(errors="replace") if log.exists() else ""
    hints = []
    if "AutoUpdate skipped (offline)" in text or "AutoUpdate disabled" in text:
        missing = [s.split("requirement")[-1].split("not found")[0].strip(" s") for s in text.splitlines()
                   if "not found, attempting AutoUpdate" in s or "not found, AutoUpdate disabled" in s]  # fmt: skip
        hints.append("not installed: " + ", ".join(dict.fromkeys(missing)))
    for s in text.splitlines():
        if "Downloading http" in s or ("download" in s.lower() and "github.com" in s):
            hints.append("needs a download from outside the package registry: " + one_line(s.split("Downloading")[-1], 100))
            break
    return one_line(error, 200) + (f" [{'; '.join(hints)}]" if hints else "")


def write_table(rows: list[dict], out: Path, command: str) -> None:
    """export_table.json and export_table.md."""
    (out / "export_table.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    lines = [f"Command: `{command}`", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        d = r.get("max_rel_diff")
        cells = [r["model"], r["kind"], r["format"], "yes" if r["export_ok"] else "no", f"{r.get('export_s', 0):.1f}",
                 "yes" if r["runtime_ran"] else "no", "" if d is None else f"{d:.1e}",
                 (r.get("error") or "").replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    (out / "export_table.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Build the checkpoints, export each to each format, write the table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/export_table", help="output folder")
    p.add_argument("--imgsz", type=int, default=160, help="image size (training, pruning and export)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--kinds", default="pruned,slimmed", help="pruned,slimmed[,parent]; parent: the unpruned model")
    p.add_argument("--formats", default="all", help="comma-separated export formats, or 'all'")
    p.add_argument("--timeout", type=int, default=300, help="seconds for one export and its check")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fmts = formats() if args.formats == "all" else args.formats.split(",")
    names, kinds = args.models.split(","), args.kinds.split(",")
    made = make_checkpoints(out, names, args.imgsz)
    table = out / "export_table.json"
    rows = json.loads(table.read_text())["rows"] if table.exists() else []
    command = "python tools/export_table.py " + " ".join(argv)
    for name in names:
        for kind in kinds:
            ckpt, task, data, image = made[(name, kind)]
            for fmt in fmts:
                r = run_format(ckpt, task, data, image, fmt, out / "exports" / f"{name}-{kind}" / fmt, args.imgsz,
                               args.timeout)  # fmt: skip
                row = {"model": name, "kind": kind, "format": fmt, **{k: r.get(k) for k in COLUMNS[3:]}}
                rows = [x for x in rows if (x["model"], x["kind"], x["format"]) != (name, kind, fmt)] + [row]
                write_table(rows, out, command)
                d = row["max_rel_diff"]
                print(f"{name} {kind} {fmt}: export {'ok' if row['export_ok'] else 'FAILED'} {row['export_s']}s, "
                      f"ran {row['runtime_ran']}, diff {d if d is None else f'{d:.1e}'}, {row['error'] or ''}",
                      flush=True)  # fmt: skip
    print((out / "export_table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
