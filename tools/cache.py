"""A cache of deterministic tool results, kept beside the artifacts they name.

A tool whose spec says it is ``deterministic`` gives the same result for the same inputs, so the executor asks here
before running it. The key is everything the result depends on: the tool's name and version, the weights in use
(the active copy's model id, which changes when a user retrains), the case's content id, the validated arguments,
the newest artifact of every kind the thread holds (what the tool can read through ``ToolContext.latest``) and the
thread state the tool reports (:meth:`~macro.tools.base.MacroTool.cache_state`, e.g. which volumes a continual
segmentation has adapted on). A hit whose artifact files are gone is a miss. The index lives in the artifact
store's root, so results and the files they name are kept, and deleted, together.

Why: an agent thread, a benchmark's agents and the SFT data builder ask the same questions of the same scans; a
test-time-adapted segmentation costs ~10 s on 2 cores, a lookup a millisecond.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from macro import weights
from macro.case import Case
from macro.tools.base import MacroTool

FILE = "tool-cache.sqlite"


class ResultCache:
    def __init__(self, root: Path):
        self.path = Path(root) / FILE
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        return self._conn

    @staticmethod
    def key(tool: MacroTool, case: Case, args: dict, history: list[dict], state: str) -> str:
        newest = {ref["kind"]: ref["id"] for ref in history if "kind" in ref and "id" in ref}
        parts = {
            "tool": tool.name,
            "version": tool.spec.version,
            "weights": _model_id(tool.spec.weights),
            "case": case.id,
            "args": args,
            "inputs": dict(sorted(newest.items())),
            "state": state,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """``{"result": ToolResult fields, "used": artifact ids read}`` or None (also when a named file is gone)."""
        row = self._db().execute("SELECT entry FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        entry = json.loads(row[0])
        if not all(Path(a["path"]).is_file() for a in entry["result"].get("artifacts", [])):
            return None
        return entry

    def put(self, key: str, result: dict, used: dict[str, str]) -> None:
        entry = json.dumps({"result": result, "used": used}, default=str)
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO results (key, entry) VALUES (?, ?)", (key, entry))


def _model_id(slot: str | None) -> str | None:
    if slot is None:
        return None
    declared = weights.SLOTS[slot]
    return weights.read_manifest(declared.active(), declared.regenerate).get("sha256")
