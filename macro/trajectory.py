"""Trajectories: every agent turn, recorded in SQLite for verification, mining, memory and GRPO.

The database runs in WAL mode with a busy timeout and short transactions, so several processes (benchmark
workers, a training loop, the chat UI) can append at once. Each row keeps a few indexed columns plus the full
trajectory as JSON, so the schema can grow without migrations of old rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

KEEP = object()  # verify(): leave the recorded memory entry as it is
VERIFICATION = ("unverified", "verified", "failed")


@dataclass
class Trajectory:
    question: str
    case_id: str
    steps: list[dict]
    answer: str
    policy_id: str
    thread_id: str
    case_ref: dict = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    family: str = ""
    embedding_id: str | None = None
    verification: str = "unverified"
    verification_source: str | None = None
    verification_note: str = ""
    format_errors: list[str] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    ms: float = 0.0
    id: str = field(default_factory=lambda: f"traj-{uuid.uuid4().hex[:16]}")
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trajectories (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    case_id TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    verification TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trajectories_thread ON trajectories(thread_id);
CREATE INDEX IF NOT EXISTS trajectories_case ON trajectories(case_id);
"""


class TrajectoryStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        return conn

    def add(self, traj: Trajectory) -> str:
        if traj.verification not in VERIFICATION:
            raise ValueError(f"verification must be one of {VERIFICATION}")
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO trajectories VALUES (?,?,?,?,?,?,?)",
                (
                    traj.id,
                    traj.thread_id,
                    traj.case_id,
                    traj.policy_id,
                    traj.verification,
                    traj.created,
                    json.dumps(traj.to_dict()),
                ),
            )
        return traj.id

    def get(self, traj_id: str) -> Trajectory:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT body FROM trajectories WHERE id = ?", (traj_id,)).fetchone()
        if row is None:
            raise KeyError(f"no trajectory {traj_id!r}")
        return Trajectory(**json.loads(row[0]))

    def list(
        self, thread_id: str | None = None, limit: int | None = None, verification: Sequence[str] | None = None
    ) -> list[Trajectory]:
        where, params = [], []
        if thread_id is not None:
            where, params = ["thread_id = ?"], [thread_id]
        if verification is not None:
            where.append(f"verification IN ({','.join('?' * len(verification))})")
            params += list(verification)
        query = (
            "SELECT body FROM trajectories" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created"
        )
        if limit is not None:
            query, params = query + " LIMIT ?", params + [limit]
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            return [Trajectory(**json.loads(r[0])) for r in conn.execute(query, params)]

    def threads(self, limit: int = 100) -> list[dict]:
        """The most recently used threads first: ``{"thread_id", "turns", "question" (the first), "modality",
        "last"}``, for a thread picker (the web UI) without loading every turn."""
        if not self.path.exists():
            return []
        query = """
            SELECT t.thread_id, COUNT(*), MAX(t.created),
                   (SELECT body FROM trajectories f WHERE f.thread_id = t.thread_id ORDER BY f.created LIMIT 1)
            FROM trajectories t GROUP BY t.thread_id ORDER BY MAX(t.created) DESC LIMIT ?"""
        with closing(self._connect()) as conn:
            rows = conn.execute(query, (limit,)).fetchall()
        out = []
        for thread_id, turns, last, body in rows:
            first = json.loads(body)
            modality = (first.get("case_ref") or {}).get("modality", "")
            out.append(
                {
                    "thread_id": thread_id,
                    "turns": turns,
                    "question": first["question"],
                    "modality": modality,
                    "last": last,
                }
            )
        return out

    def verify(
        self, traj_id: str, verification: str, source: str, note: str = "", embedding_id: str | None | object = KEEP
    ) -> Trajectory:
        """Record a verdict (a benchmark checker's or a person's); the row and its JSON body change together.
        ``embedding_id`` sets the run's memory entry (None: it has none); by default the recorded one stays."""
        if verification not in VERIFICATION:
            raise ValueError(f"verification must be one of {VERIFICATION}")
        with closing(self._connect()) as conn, conn:
            row = conn.execute("SELECT body FROM trajectories WHERE id = ?", (traj_id,)).fetchone()
            if row is None:
                raise KeyError(f"no trajectory {traj_id!r}")
            traj = Trajectory(**json.loads(row[0]))
            traj.verification, traj.verification_source, traj.verification_note = verification, source, note
            if embedding_id is not KEEP:
                traj.embedding_id = embedding_id
            conn.execute(
                "UPDATE trajectories SET verification = ?, body = ? WHERE id = ?",
                (verification, json.dumps(traj.to_dict()), traj_id),
            )
        return traj

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with closing(self._connect()) as conn:
            return conn.execute("SELECT COUNT(*) FROM trajectories").fetchone()[0]
