"""The README's logging snippet keeps the console output and also logs through distwal.

The snippet is taken from the README itself (section "Existing `logging` calls") and run in
a fresh interpreter: the warning must appear on stderr (the console handler survived) and
as a record in the directory. Reversing the snippet's two lines loses the console: that
shows the check can fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers.procs import child_env

from distwal._folder import iter_envelopes, list_writers

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### Existing `logging` calls", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet(tmp_path: Path, snippet: str) -> tuple[str, list[dict]]:
    wal = tmp_path / "wal"
    script = "import logging, distwal\ndistwal.init()\nstep = 7\n" + snippet + "distwal.flush()\n"
    result = subprocess.run([sys.executable, "-c", script], env=child_env(wal), capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    data = [orjson.loads(raw)["data"] for w in list_writers(str(wal)) for _, _, raw in iter_envelopes(w, [])]
    return result.stderr, data


def test_readme_logging_snippet_keeps_the_console_and_logs_through_distwal(tmp_path):
    stderr, data = run_snippet(tmp_path, readme_snippet())
    assert "loss spiked at step 7" in stderr, "the console lost the warning"
    assert [(d["type"], d["level"], d["message"]) for d in data] == [("log", "WARNING", "loss spiked at step 7")]


def test_the_other_order_loses_the_console(tmp_path):
    lines = readme_snippet().splitlines()
    basic = next(line for line in lines if "basicConfig" in line)
    reordered = "\n".join([line for line in lines if line != basic][:1] + [basic] + lines[2:]) + "\n"
    stderr, data = run_snippet(tmp_path, reordered)
    assert "loss spiked" not in stderr and len(data) == 1
