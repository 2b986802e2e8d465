"""Where MACRO keeps its state: one home folder (``MACRO_HOME``) holding every store.

Paths are derived, never cached globally, so tests and worker processes can point ``MACRO_HOME``
elsewhere before any store is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_data_dir


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def current(cls) -> "Home":
        env = os.environ.get("MACRO_HOME")
        return cls(Path(env).expanduser() if env else Path(user_data_dir("macro", appauthor=False)))

    @property
    def threads_db(self) -> Path:
        return self.root / "threads.sqlite"

    @property
    def trajectories_db(self) -> Path:
        return self.root / "trajectories.sqlite"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def memory(self) -> Path:
        return self.root / "memory"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def skills(self) -> Path:
        return self.root / "skills"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def uploads(self) -> Path:
        """Scans opened in the web UI, copied here so their threads find them after a restart."""
        return self.root / "uploads"

    @property
    def mcp_servers(self) -> Path:
        """External MCP servers added with ``macro tools add-mcp``, with the tools each one offered."""
        return self.root / "mcp_servers.json"

    def ensure(self) -> "Home":
        """Create the home when missing, owner-only (0o700): it holds scans' paths, trajectories and results. Set
        ``MACRO_HOME_GROUP=1`` before it is first created to share it with the owner's group (0o770). An existing
        home keeps the mode it has."""
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o770 if os.environ.get("MACRO_HOME_GROUP") == "1" else 0o700)
        return self
