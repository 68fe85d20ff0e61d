"""Output folders: made where asked (`make_folder`), and written so that readers see the old one or the new
one complete, never half of either (`atomic_folder`); tables of rows as CSV (`write_csv`)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def make_folder(path) -> Path:
    """The folder `path`, made with its parents where missing; an OSError naming `path` where a file stands
    at it or at one of its parents (mkdir's own message names neither clearly)."""
    path = Path(path)
    for at in (path, *path.parents):
        if at.exists() and not at.is_dir():
            raise NotADirectoryError(f"{at} is a file, not a folder" + (f" (in the path {path})" if at != path else ""))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """`with atomic_folder(path) as tmp:` write the folder's files into `tmp`; when the block ends they
    appear under `path`, replacing an existing folder there.

    `tmp` is a fresh hidden folder beside `path` (same file system, so the move is a rename). An exception
    inside the block removes `tmp` and leaves `path` as it was. The result is readable by everyone
    (folders 0755, files 0644) whatever the umask of the temporary folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared checkpoint from other users
        for folder, dirs, files in os.walk(tmp):
            for name in dirs:
                Path(folder, name).chmod(0o755)
            for name in files:
                Path(folder, name).chmod(0o644)
        _move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only still there when something failed


def _move_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    # a folder cannot be renamed over a non-empty one: move the old aside, the new in, then delete the old
    old = tmp.with_name(tmp.name + ".old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> None:
    """`rows` as a CSV file with a header: the columns are `columns`, or every key of the rows in the order they
    first appear; lines end in a newline alone (for awk and cut as well as spreadsheets)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
