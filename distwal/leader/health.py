"""The leader's running figures, written to <dir>/sender.json for `distwal status`.

The sender counts what it sends and how the sink answers; the roster counts the writers
it adopted and retired. Both write into one Health, so status reads one file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    state: str = "starting"
    errors: int = 0
    retries: int = 0
    last_error: str | None = None
    last_success: float | None = None
    acked_records: int = 0
    acked_batches: int = 0
    dead_letters: int = 0
    adopted: int = 0
    retired: int = 0
    started: float = field(default_factory=time.time)
