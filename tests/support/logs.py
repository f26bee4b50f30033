"""Every log record a block emits, as text, so a test can prove no secret reaches the logs."""

from __future__ import annotations

import logging


class LogLines(logging.Handler):
    """Every log record's full text (logger name, level, message and traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
