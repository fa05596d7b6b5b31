"""distwal.LoggingHandler: stdlib logging records, made durable through the writer."""

from __future__ import annotations

import logging
from typing import Any


class LoggingHandler(logging.Handler):
    """A logging.Handler that logs each record through the process's distwal writer.

        logging.getLogger().addHandler(distwal.LoggingHandler())
        logging.info("epoch %d done", 3)   # -> {"type": "log", "level": "INFO", "message": ...}

    Records from distwal's own logger are skipped (they could loop). emit() never raises:
    failures go to logging's handleError, as for any handler.
    """

    def __init__(self, level: int = logging.NOTSET, writer: Any = None) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "distwal" or record.name.startswith("distwal."):
            return
        try:
            entry: dict[str, Any] = {
                "type": "log",
                "level": record.levelname,
                "logger": record.name,
                "message": self.format(record) if self.formatter else record.getMessage(),
                "created": record.created,
                "module": record.module,
                "lineno": record.lineno,
                "process": record.process,
                "thread": record.threadName,
            }
            if record.exc_info and record.exc_info[0] is not None:
                entry["exception"] = logging.Formatter().formatException(record.exc_info)
            if self.writer is not None:
                self.writer.log(entry)
            else:
                from ._api import log

                log(entry)
        except Exception:  # a handler must not raise into the caller's logging call
            self.handleError(record)
