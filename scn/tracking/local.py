"""Local run records: metrics.jsonl (a row per epoch) and summary.json, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scn.io import atomic_open


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole file each epoch: a resumed run's file holds the earlier epochs too."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def relabel_csv(rows: list[dict]) -> str:
    """relabels.csv: the relabel audit, a row per relabel."""
    keys = ("sample", "old", "new", "epoch", "clean")
    return "\n".join([",".join(keys), *(",".join(str(r[k]) for k in keys) for r in rows)]) + "\n"
