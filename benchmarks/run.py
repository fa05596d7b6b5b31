"""Run every benchmark in benchmarks/ and, in full mode, put their tables in benchmarks/README.md.

    python benchmarks/run.py            # full: large N, many repetitions, creates benchmarks/.venv-weave if missing,
                                        #       rewrites the results section of benchmarks/README.md
    python benchmarks/run.py --short    # CI: small N, few repetitions, never creates a venv, README untouched
    python benchmarks/run.py append     # only the named benchmark(s); the README is left alone
    python benchmarks/run.py --readme ship   # the named ones, and their sections of the README (the others stay)

A benchmark is any module benchmarks/<name>.py (not starting with "_", not this file) that
defines `main(short: bool) -> str`: it prints its own table as it goes and returns it as
markdown (benchmarks/_report.py makes both). Benchmarks run only through this file, which puts
benchmarks/ and tests/ (for tests/helpers) on their import path. Each one's markdown is also written to benchmarks/.out/<name>.md (git-ignored).
A benchmark that raises is reported and makes the exit code 1, after the others have run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")  # tests/helpers: the children, servers and fixtures
README = os.path.join(HERE, "README.md")
OUT = os.path.join(HERE, ".out")
START = "<!-- results:start (written by benchmarks/run.py; edits inside are overwritten) -->"
END = "<!-- results:end -->"


def discover() -> list[str]:
    names = []
    for entry in sorted(os.listdir(HERE)):
        name, ext = os.path.splitext(entry)
        if ext == ".py" and not name.startswith("_") and name != "run":
            names.append(name)
    return names


def machine() -> str:
    """One paragraph on where the numbers came from."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
            mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    fs = _filesystem_of(os.environ.get("TMPDIR", "/tmp"))
    rev = _git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    try:
        import orjson

        orjson_version = orjson.__version__
    except Exception:  # noqa: BLE001
        orjson_version = "?"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; Linux {platform.release()}; temp dirs on {fs}; "
        f"Python {platform.python_version()}, orjson {orjson_version}; distwal at {rev or '?'}{dirty}"
    )


def _filesystem_of(path: str) -> str:
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")):
                    if len(parts[1]) >= len(best):
                        best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} ({path})"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def _split_results(inner: str) -> tuple[str, list[tuple[str, str]]]:
    """The inside of the results block: (text before the first section, [(name, body), ...])."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in inner.splitlines():
        if line.startswith("### "):
            sections.append((line[4:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return "\n".join(head).strip(), [(name, "\n".join(body).strip()) for name, body in sections]


def update_readme(sections: list[tuple[str, str]], about: str, when: str) -> None:
    """Replace the sections of the benchmarks that ran; keep the others as they were.

    Each section starts with the line saying when and where it was measured (an older
    layout had one such line for the whole block: it moves into the sections it covered).
    """
    text = open(README).read() if os.path.exists(README) else "# Benchmarks\n\n## Latest results\n\n"
    old: list[tuple[str, str]] = []
    if START in text and END in text:
        head, rest = text.split(START, 1)
        inner, tail = rest.split(END, 1)
        shared, old = _split_results(inner)
        if shared.startswith("Measured "):
            old = [(name, body if body.startswith("Measured ") else f"{shared}\n\n{body}") for name, body in old]
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    fresh = {name: f"Measured {when} on: {about}.\n\n{md.rstrip()}" for name, md in sections}
    merged = [(name, fresh.pop(name, body)) for name, body in old] + list(fresh.items())
    body = [START, ""]
    for name, md in merged:
        body += [f"### {name}", "", md, ""]
    body.append(END)
    with open(README, "w") as f:
        f.write(head + "\n".join(body) + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI mode: small N, few repetitions, no venv creation")
    parser.add_argument("--readme", action="store_true",
                        help="full mode with named benchmarks: replace their sections of the README, keep the others")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args()

    # The one place benchmarks get their imports: benchmarks/ (_report, the child roles) and
    # tests/ (`helpers`). Children get tests/ through PYTHONPATH (a child script finds its
    # neighbours in benchmarks/ by itself; on PYTHONPATH, benchmarks/mlflow.py would hide mlflow).
    sys.path[:0] = [HERE, TESTS]
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, *filter(None, [os.environ.get("PYTHONPATH")])])
    available = discover()
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: available are {', '.join(available)}")

    os.makedirs(OUT, exist_ok=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    about = machine()
    load_start = load()
    print(f"# {when}; {about}; mode: {'short' if args.short else 'full'}", flush=True)
    sections: list[tuple[str, str]] = []
    failed = []
    for name in names:
        print(f"\n## {name}\n", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(name)
            md = module.main(short=args.short)
        except Exception:  # noqa: BLE001 - report it, run the rest, fail at the end
            traceback.print_exc()
            failed.append(name)
            continue
        with open(os.path.join(OUT, f"{name}.md"), "w") as f:
            f.write(md)
        sections.append((name, md))
        print(f"\n({name}: {time.monotonic() - started:.0f} s; markdown in benchmarks/.out/{name}.md)", flush=True)

    about += f"; 1-minute load average {load_start} at the start, {load()} at the end (2 cores: above 0.5 means other work shared the machine)"
    print(f"\n{about}")
    if not args.short and not failed and (not args.names or args.readme):
        update_readme(sections, about, when)
        print(f"\nwrote the results of {', '.join(n for n, _ in sections)} in {os.path.relpath(README)}")
    elif not args.short and (failed or args.names):
        print("\nbenchmarks/README.md not updated: "
              + ("some failed" if failed else "only some benchmarks ran (add --readme to write their sections)"))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
