"""What the subcommands share: the directory argument and its default."""

from __future__ import annotations

import os

from .._config import DEFAULT_DIR, ENV_DIR


def resolve_dir(arg: str | None) -> str:
    """DIR from the command line, else DISTWAL_DIR, else ./.distwal; absolute."""
    return os.path.abspath(arg or os.environ.get(ENV_DIR) or DEFAULT_DIR)
