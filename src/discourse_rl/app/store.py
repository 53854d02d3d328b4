"""Saved class sets: one SQLite file on the serving machine.

A class set is what the page shows after labelling several essays: each essay's name and text,
the model's elements and, where the teacher corrected them, the corrected elements. The page
saves one only when the teacher presses Save; the file is created then (not before), lives on
the machine that runs `discourse-rl serve` (`serve --store PATH`; default
`~/.local/share/discourse-rl/class-sets.sqlite3`) and is sent nowhere else. Saved sets are
listed, reopened (after a restart too) and deleted from the page.

One table, one row per class set; the essays and labels are stored as one JSON document (the
API's `ClassSet` shape) so that a set reopens exactly as it was saved.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discourse_rl.core.common import DiscourseRLError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS class_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    saved_at REAL NOT NULL,
    stage TEXT NOT NULL,
    n_essays INTEGER NOT NULL,
    n_corrected INTEGER NOT NULL,
    document TEXT NOT NULL
)
"""


def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "discourse-rl" / "class-sets.sqlite3"


class ClassSetStore:
    """The class sets saved in one SQLite file (created on the first save)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @contextmanager
    def _db(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        with self._lock:
            if not create and not self.path.is_file():
                yield None
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(self.path, timeout=10)
            except (OSError, sqlite3.Error) as exc:
                raise DiscourseRLError(
                    f"cannot open the class-set store {self.path}: {exc}"
                ) from None
            try:
                con.execute(_SCHEMA)
                with con:
                    yield con
            except sqlite3.DatabaseError as exc:
                raise DiscourseRLError(
                    f"the class-set store {self.path} is unreadable: {exc}"
                ) from None
            finally:
                con.close()

    def save(self, document: dict[str, Any], set_id: int | None = None) -> dict[str, Any]:
        """Store a class set (a new one, or replace `set_id`); its listing entry."""
        essays = document.get("essays", [])
        row = (
            str(document.get("name") or "class set"),
            time.time(),
            str(document.get("stage", "")),
            len(essays),
            sum(1 for e in essays if e.get("corrected") is not None),
            json.dumps(document, ensure_ascii=False),
        )
        with self._db(create=True) as con:
            assert con is not None
            if set_id is None:
                cur = con.execute(
                    "INSERT INTO class_sets (name, saved_at, stage, n_essays, n_corrected, "
                    "document) VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                set_id = int(cur.lastrowid or 0)
            else:
                cur = con.execute(
                    "UPDATE class_sets SET name = ?, saved_at = ?, stage = ?, n_essays = ?, "
                    "n_corrected = ?, document = ? WHERE id = ?",
                    (*row, set_id),
                )
                if cur.rowcount == 0:
                    raise KeyError(set_id)
        return {"id": set_id, "name": row[0], "saved_at": row[1], "stage": row[2],
                "n_essays": row[3], "n_corrected": row[4]}  # fmt: skip

    def list(self) -> list[dict[str, Any]]:
        with self._db(create=False) as con:
            if con is None:
                return []
            rows = con.execute(
                "SELECT id, name, saved_at, stage, n_essays, n_corrected FROM class_sets "
                "ORDER BY saved_at DESC, id DESC"
            ).fetchall()
        keys = ("id", "name", "saved_at", "stage", "n_essays", "n_corrected")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def get(self, set_id: int) -> dict[str, Any]:
        with self._db(create=False) as con:
            row = None
            if con is not None:
                row = con.execute(
                    "SELECT document, saved_at FROM class_sets WHERE id = ?", (set_id,)
                ).fetchone()
        if row is None:
            raise KeyError(set_id)
        document: dict[str, Any] = json.loads(row[0])
        return document | {"id": set_id, "saved_at": row[1]}

    def delete(self, set_id: int) -> None:
        with self._db(create=False) as con:
            deleted = 0
            if con is not None:
                deleted = con.execute("DELETE FROM class_sets WHERE id = ?", (set_id,)).rowcount
        if not deleted:
            raise KeyError(set_id)
