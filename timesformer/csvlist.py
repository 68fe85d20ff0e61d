"""Reading a Kinetics-style CSV list of clips (`timesformer.data.video_csv` makes it a dataset)."""

from __future__ import annotations

import csv
from pathlib import Path

from .video import VIDEO_EXTENSIONS


def read_csv_list(path, classes: list[str] | None = None, root=None) -> tuple[list[tuple[str, int]], list[str]]:
    """(items, classes) of a list with one `path,label` (or `path label`) per line; a header line is allowed.

    `items` are (path, label index) pairs. Labels are class names or integer indices; relative paths are taken
    relative to `root` (default: the list's folder). Classes are the sorted names (or 0..max for integer labels)
    unless given.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    rows = []
    # utf-8-sig: Excel starts a UTF-8 CSV with a byte order mark, which would stick to the first path or header
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, line in enumerate(f):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = next(csv.reader([line])) if "," in line else line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n + 1}: expected 'path,label', got {line!r}")
            clip, label = parts[0].strip(), parts[1].strip()
            if not label or label.lower().endswith(VIDEO_EXTENSIONS):  # "my clip.mp4" alone: class "clip.mp4"
                raise ValueError(f"{path}:{n + 1}: {line!r} has no label (a path with spaces needs a comma: "
                                 "'path,label')")
            if n == 0 and label.lower() in ("label", "class", "labels") and clip.lower() in ("path", "video", "file"):
                continue  # header
            rows.append((clip, label, n + 1))
    if not rows:
        raise ValueError(f"{path} lists no clips")
    numeric = all(label.lstrip("-").isdigit() for _, label, _ in rows)
    if classes is None:
        classes = ([str(i) for i in range(max(int(lb) for _, lb, _ in rows) + 1)] if numeric
                   else sorted({lb for _, lb, _ in rows}))
    index = {c: i for i, c in enumerate(classes)}
    items, seen = [], {}
    for clip, label, line in rows:
        first = seen.setdefault(clip, (label, line))
        if first[0] != label:  # one clip, two classes: label noise nobody meant
            raise ValueError(f"{path}:{line}: {clip} is listed as {label!r} here and as {first[0]!r} on line "
                             f"{first[1]}")
        if numeric and label not in index:
            label_idx = int(label)
            if label_idx < 0:
                raise ValueError(f"{path}:{line}: label {label} is negative: integer labels are class indices, from 0")
            if label_idx >= len(classes):
                n = len(classes)
                valid = "not 0, the index" if n == 1 else f"outside 0..{n - 1}, the indices"
                raise ValueError(f"{path}:{line}: label {label} is {valid} of the {n} training "
                                 f"{'class' if n == 1 else 'classes'}")
        elif label not in index:
            raise ValueError(f"{path}:{line}: class {label!r} is not one of the training classes")
        else:
            label_idx = index[label]
        p = Path(clip)
        items.append((str(p if p.is_absolute() else root / p), label_idx))
    return items, list(classes)
