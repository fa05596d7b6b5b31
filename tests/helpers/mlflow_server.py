"""A real `mlflow server` for tests and benchmarks, from PyPI, in its own virtualenv.

    python = ensure_mlflow_venv()            # <repo>/.venv-mlflow, created once, reused
    with MlflowServer(tmp_path) as server:   # SQLite backend store, 127.0.0.1, a free port
        server.url                           # http://127.0.0.1:PORT
        server.api("runs/search", {...})     # what arrived, through MLflow's REST API
        server.stop(); server.start()        # the same store and port again

The `mlflow` package never enters distwal's environment: its venv is separate (hundreds of
MB of dependencies), and the sink speaks REST with httpx. MLFLOW_VERSION pins what is tested.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-mlflow"
MLFLOW_REQUIREMENT = "mlflow==3.17.2"
STAMP = VENV / ".installed"


class MlflowUnavailable(RuntimeError):
    """mlflow cannot be installed here: tests that need it skip with this reason."""


def mlflow_python() -> str:
    return str(VENV / "bin" / "python")


def ensure_mlflow_venv() -> str:
    """The python of .venv-mlflow with mlflow installed (created on first use; idempotent)."""
    if STAMP.exists() and STAMP.read_text().strip() == MLFLOW_REQUIREMENT:
        return mlflow_python()
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([mlflow_python(), "-m", "pip", "install", "--quiet", MLFLOW_REQUIREMENT],
                            capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise MlflowUnavailable(f"pip install {MLFLOW_REQUIREMENT} failed: {result.stderr.strip()[-300:]}")
    STAMP.write_text(MLFLOW_REQUIREMENT + "\n")
    return mlflow_python()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """`mlflow server` with a SQLite store under `workdir`; start() waits until it answers."""

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None, workers: int = 1) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mlflow-server.log"
        self._client = httpx.Client(timeout=120)

    def start(self, timeout: float = 120.0) -> MlflowServer:
        python = ensure_mlflow_venv()
        store = self.workdir / "mlflow.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTWAL_", "MLFLOW_"))}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                 "--default-artifact-root", str(self.workdir / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(self.workers)],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self._client.get(f"{self.url}/health", timeout=2).status_code == 200:
                    # /health does not touch the store: one API call sets it up (on a new
                    # database, MLflow's migrations), so no test pays for it in its first request.
                    self.experiment_id("Default")
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout}s: {self.log_tail()}")

    def stop(self, crash: bool = False) -> None:
        """SIGTERM the server's process group (it forks workers), SIGKILL after 10 s; always reaped.
        crash=True: SIGKILL at once, as a machine or OOM kill would."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGKILL, 10),) if crash else ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
        except ProcessLookupError:
            pass

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._client.close()

    # -- reading back through the REST API --------------------------------------------------------

    def api(self, endpoint: str, body: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        response = self._client.post(url, json=body) if body is not None else self._client.get(url, params=params)
        response.raise_for_status()
        return dict(response.json())

    def experiment_id(self, name: str) -> str | None:
        response = self._client.get(f"{self.url}/api/2.0/mlflow/experiments/get-by-name",
                                    params={"experiment_name": name})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return str(response.json()["experiment"]["experiment_id"])

    def runs(self, experiment: str, filter: str = "", view: str = "ACTIVE_ONLY") -> list[dict[str, Any]]:
        experiment_id = self.experiment_id(experiment)
        if experiment_id is None:
            return []
        runs: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id], "filter": filter, "run_view_type": view,
                                    "max_results": 1000}
            if token:
                body["page_token"] = token
            got = self.api("runs/search", body)
            runs.extend(got.get("runs", []))
            token = got.get("next_page_token")
            if not token:
                return runs

    def writer_runs(self, experiment: str) -> dict[str, list[dict[str, Any]]]:
        """Active child runs by their distwal.writer tag (a list, so a duplicate shows)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for run in self.runs(experiment):
            writer = tags(run).get("distwal.writer")
            if writer is not None:
                found.setdefault(writer, []).append(run)
        return found

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """Every stored point of metric `key`: (step, value, timestamp), sorted."""
        points: list[tuple[int, float, int]] = []
        token = None
        while True:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                params["page_token"] = token
            got = self.api("metrics/get-history", **params)
            points += [(int(m.get("step", 0)), float(m["value"]), int(m["timestamp"])) for m in got.get("metrics", [])]
            token = got.get("next_page_token")
            if not token:
                return sorted(points)

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.api("runs/get", run_id=run_id)["run"])


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}


def params(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p.get("value", "") for p in run.get("data", {}).get("params", [])}


def timeout_for(seconds: float) -> float:
    """A test's timeout: `seconds`, plus the time to install mlflow when its venv is not ready yet
    (pytest-timeout counts the session fixture's setup in the first test that uses it)."""
    ready = STAMP.exists() and STAMP.read_text().strip() == MLFLOW_REQUIREMENT
    return seconds if ready else seconds + 1200


if __name__ == "__main__":  # `python tests/helpers/mlflow_server.py`: create the venv ahead (Makefile, CI)
    try:
        print(f"mlflow for the tests: {ensure_mlflow_venv()} ({MLFLOW_REQUIREMENT})")
    except (MlflowUnavailable, OSError, subprocess.SubprocessError) as exc:
        print(f"mlflow not installable, its tests will skip: {exc}")

