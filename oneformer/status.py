"""status.json: one JSON object per line, as TAO actions write it, for UIs and orchestrators to tail."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any


class StatusWriter:
    """Appends {date, time, status, message, ...} lines to <action dir>/status.json."""

    def __init__(self, folder: Path, rank_zero: bool = True) -> None:
        self.path = Path(folder) / "status.json"
        self.enabled = rank_zero

    def write(self, status: str, message: str, **fields: Any) -> None:
        """One line; `kpi` and other fields pass through as given."""
        if not self.enabled:
            return
        now = datetime.now()
        line = {"date": now.strftime("%-m/%-d/%Y"), "time": now.strftime("%H:%M:%S"), "status": status,
                "message": message, **{k: v for k, v in fields.items() if v is not None}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def read_status(folder: Path) -> list[dict]:
    """All lines of a status.json."""
    p = Path(folder) / "status.json"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
