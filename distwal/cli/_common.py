"""What the subcommands share: the directory argument and its default."""

from __future__ import annotations

import os

from .._config import DEFAULT_DIR, ENV_DIR
from .._exceptions import ConfigError
from .._layout import WRITERS


def resolve_dir(arg: str | None) -> str:
    """DIR from the command line, else DISTWAL_DIR, else ./.distwal; absolute."""
    return os.path.abspath(arg or os.environ.get(ENV_DIR) or DEFAULT_DIR)


def require_run_dir(path: str) -> str:
    """`path` if it is a distwal directory; ConfigError naming the fix otherwise."""
    if not os.path.isdir(os.path.join(path, WRITERS)):
        raise ConfigError(f"{path} is not a distwal directory (no {WRITERS}/ inside): pass DIR or set DISTWAL_DIR")
    return path
