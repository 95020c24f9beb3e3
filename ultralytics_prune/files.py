"""Files: the one atomic-write idiom every writer of the package uses (a reader, or a run resumed after a kill, only
ever sees a file whole), the CSV files of runs, and what reading a file that is not a whole checkpoint raises."""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# what reading a file that is not a whole checkpoint raises (truncated, another format, classes that do not import)
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, AttributeError, ImportError,
              pickle.UnpicklingError)  # fmt: skip


@contextmanager
def atomic_path(file: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temp path beside `file` to write to: renamed over `file` when the block ends, removed when it fails.

    Args:
        file (str | Path): The file to write.
        keep_suffix (bool): Name the temp file `.<stem>.tmp<suffix>` (for writers that infer the format from the
            suffix, e.g. matplotlib) instead of `.<name>.tmp`.

    Yields:
        (Path): The temp path; the file is always whole, or the one there before (a full disk leaves no temp file).
    """
    file = Path(file)
    tmp = file.with_name(f".{file.stem}.tmp{file.suffix}" if keep_suffix else f".{file.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(rows: list[dict], file: str | Path) -> Path:
    """Write `rows` to a CSV file, replacing it atomically: every key of any row is a column, in the order first seen,
    and a row without it gets `nan` there."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(file) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="nan")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return Path(file)


def read_csv(file: str | Path) -> list[dict]:
    """Read a CSV written by `write_csv` back into dicts of floats (non-numbers kept as strings)."""

    def parse(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    with open(file, newline="", encoding="utf-8") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]
