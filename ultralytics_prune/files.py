"""Files: the one atomic-write idiom every writer of the package uses (a reader, or a run resumed after a kill, only
ever sees a file whole), and what reading a file that is not a whole checkpoint raises."""

from __future__ import annotations

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
