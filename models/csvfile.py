"""Reading the small CSV files that users write by hand (tag control, datasets).

Invariants: the first row must be exactly the expected header (so a file for one purpose is never read as
another's), every row has exactly that many cells, and errors name the file and line. UTF-8, with or
without the byte-order mark spreadsheet programs write.
"""

from __future__ import annotations

import csv
from pathlib import Path


class CsvError(ValueError):
    """A CSV file is unreadable or not in the expected form."""


def read_csv(path: str | Path, header: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) for every non-blank row after the header."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CsvError(f"cannot read {path}: {exc}") from exc
    rows = [(number, [cell.strip() for cell in row]) for number, row in enumerate(csv.reader(text.splitlines()), 1)]
    rows = [(number, cells) for number, cells in rows if any(cells)]
    if not rows or tuple(cell.lower() for cell in rows[0][1]) != header:
        raise CsvError(f"{path}: the first line must be the header {','.join(header)}")
    for number, cells in rows[1:]:
        if len(cells) != len(header):
            raise CsvError(f"{path}:{number}: {len(cells)} cells, expected {len(header)} ({','.join(header)})")
    return rows[1:]
