"""The `distwal` command: one module per subcommand, each with run(args) -> exit code.

Exit codes: 0 success, 1 failure of the work, 2 bad usage or configuration.
"""

from __future__ import annotations

import importlib
import sys

from .._exceptions import ConfigError, LayoutError

COMMANDS = {
    "run": "run a job with its ranks logging into one directory, then drain",
    "status": "per-writer table of a directory",
    "drain": "take leadership and deliver everything logged so far",
    "serve": "the reference ingest server (protocol v1, SQLite-backed)",
    "cat": "print the envelopes on disk as JSON lines",
    "read": "print the delivered records, read back from the sink",
    "gc": "remove the history (tombstones) of delivered writers",
}

USAGE = "usage: distwal <command> [options]\n\ncommands:\n" + "".join(
    f"  {name:<8} {text}\n" for name, text in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        from .. import __version__

        print(f"distwal {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"distwal: unknown command {name!r}\n{USAGE}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{name}", __name__)
    try:
        return int(module.run(rest))
    except (ConfigError, LayoutError) as exc:
        print(f"distwal {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
