"""OTLP/HTTP logs for tests: a receiver for exact assertions, and the rotel collector.

OTLPReceiver is a real HTTP server (127.0.0.1, port 0, a thread) that decodes every
ExportLogsServiceRequest with opentelemetry-proto's classes and keeps each LogRecord it
acknowledged, copies included (collectors do not deduplicate), so tests can check every
record arrived once, or at least once, with its attributes:

    with OTLPReceiver() as receiver:
        receiver.plan = lambda req: Reply(503, {"Retry-After": "1"}) if req.index == 0 else None
        ...  # ship to receiver.sink_url
        wait_until(lambda: receiver.has_all(acks), 30, "every acked record")

`plan(request)` answers a request instead of storing it: Reply(status, headers, body), or
Reply(200, rejected=N) for a partial_success (stored, and N reported rejected). `on_store`
runs after the records are kept and before the reply leaves (to SIGKILL the leader there).

Rotel (PyPI `rotel`, an OpenTelemetry collector binary in its wheel) is installed by
`rotel_binary()` into tests/.venv-rotel once; `Rotel(upstream)` runs it receiving OTLP/HTTP
and exporting OTLP/HTTP to `upstream` (an OTLPReceiver), with its debug log of logs on.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is not installed: pip install -e '.[otlp]'")

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402


def python_value(value: AnyValue) -> Any:
    """An AnyValue as the JSON value it stands for (None for an empty one)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: python_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [python_value(v) for v in value.array_value.values]
    return getattr(value, kind)


@dataclass
class Received:
    """One LogRecord as the receiver kept it."""

    writer: str
    seq: int
    time_unix_nano: int
    data: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]
    request: int  # index of the request that carried it


@dataclass
class Request:
    index: int
    arrived: float
    records: list[Received]
    status: int | None = None
    fault: str = ""
    finished: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[tuple[str, int]]:
        return [(r.writer, r.seq) for r in self.records]

    @property
    def epochs(self) -> set[int]:
        return {int(r.attributes.get("distwal.epoch", 0)) for r in self.records}

    def __repr__(self) -> str:
        return f"<otlp req #{self.index} n={len(self.records)} status={self.status} {self.fault}>"


@dataclass
class Reply:
    """What a plan answers instead of the default (200, an empty ExportLogsServiceResponse)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rejected: int = 0  # with status 200: keep the records, report this many rejected


def decode(headers: Any, body: bytes, index: int) -> list[Received]:
    if headers.get("Content-Encoding", "") == "gzip":
        body = gzip.decompress(body)
    request = ExportLogsServiceRequest.FromString(body)
    out = []
    for resource_logs in request.resource_logs:
        resource = {kv.key: python_value(kv.value) for kv in resource_logs.resource.attributes}
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = {kv.key: python_value(kv.value) for kv in record.attributes}
                out.append(Received(str(attributes.get("distwal.writer")), int(attributes.get("distwal.seq", 0)),
                                    record.time_unix_nano, python_value(record.body), attributes, resource, index))
    return out


class OTLPReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP logs endpoint on 127.0.0.1 that keeps every record it acknowledged."""

    daemon_threads = True

    def __init__(self, port: int = 0, path: str = "/v1/logs", keep: bool = True, probes: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.path = path
        self.keep = keep  # False: count records only (benchmarks)
        # An empty request is a sink check (`distwal run`, a first leader): logged and given to the
        # plan only when a test checks that probe itself; other tests see batches alone.
        self.probes = probes
        self.plan: Callable[[Request], Reply | None] | None = None
        self.on_store: Callable[[Request], None] | None = None
        self.log: list[Request] = []
        self.stored: list[Received] = []
        self.counted = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path}"

    @property
    def sink_url(self) -> str:
        return "otlp+" + self.url

    @property
    def base_url(self) -> str:
        """Without the path: what an OTLP exporter's `endpoint` setting takes (it appends /v1/logs)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, OSError)):
            return  # a client we SIGKILLed mid-request
        super().handle_error(request, client_address)

    def handle(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            index = len(self.log)
        if not self.keep:
            request = ExportLogsServiceRequest.FromString(gzip.decompress(body) if headers.get(
                "Content-Encoding") == "gzip" else body)
            n = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
            with self._lock:
                self.counted += n
            return 200, {"Content-Type": "application/x-protobuf"}, b""
        req = Request(index, time.time(), decode(headers, body, index), headers=dict(headers.items()))
        if not req.records and not self.probes:
            return 200, {"Content-Type": "application/x-protobuf"}, ExportLogsServiceResponse().SerializeToString()
        with self._lock:
            self.log.append(req)
        reply = self.plan(req) if self.plan is not None else None
        if reply is not None and reply.status != 200:
            req.status, req.fault, req.finished = reply.status, str(reply.status), time.time()
            return reply.status, reply.headers, reply.body
        with self._lock:
            self.stored.extend(req.records)
            self.counted += len(req.records)
        if self.on_store is not None:
            self.on_store(req)
        response = ExportLogsServiceResponse()
        if reply is not None and reply.rejected:
            req.fault = f"partial:{reply.rejected}"
            response.partial_success.CopyFrom(
                ExportLogsPartialSuccess(rejected_log_records=reply.rejected, error_message="injected rejection"))
        req.status, req.finished = 200, time.time()
        return 200, {"Content-Type": "application/x-protobuf", **(reply.headers if reply else {})}, \
            response.SerializeToString()

    # -- reading back
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.log)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.stored)

    def count(self) -> int:
        with self._lock:
            return self.counted

    def records(self) -> dict[str, dict[int, Any]]:
        """{writer: {seq: data}} of every record kept (copies collapse: see copies())."""
        out: dict[str, dict[int, Any]] = {}
        for r in self.received():
            out.setdefault(r.writer, {})[r.seq] = r.data
        return out

    def copies(self) -> int:
        """Records kept more than once (at-least-once delivery)."""
        got = self.received()
        return len(got) - len({(r.writer, r.seq) for r in got})

    def has_all(self, acks: dict[str, set[int]]) -> bool:
        stored = self.records()
        return all(seqs <= set(stored.get(writer, {})) for writer, seqs in acks.items())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OTLPReceiver

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != self.server.path:
            status, headers, reply = 404, {"Content-Type": "text/plain"}, b"no such path"
        elif self.headers.get("Content-Type") != "application/x-protobuf":
            status, headers, reply = 415, {"Content-Type": "text/plain"}, b"only application/x-protobuf"
        else:
            status, headers, reply = self.server.handle(self.headers, body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- rotel, the real collector ---------------------------------------------------------------------

ROTEL_VERSION = "0.0.1a15"
ROTEL_VENV = Path(__file__).resolve().parents[1] / ".venv-rotel"


def rotel_binary() -> str:
    """The rotel-agent binary from PyPI's `rotel` wheel, installed into tests/.venv-rotel once
    (idempotent; the venv keeps it apart from distwal's own dependencies). Skips with the reason
    when it cannot be installed (no network, a platform without a wheel)."""
    agent = next(iter(ROTEL_VENV.glob("lib/python*/site-packages/rotel/rotel-agent")), None)
    if agent is None:
        try:
            if not (ROTEL_VENV / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(ROTEL_VENV)], check=True, capture_output=True,
                               timeout=120)
            subprocess.run([str(ROTEL_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"rotel=={ROTEL_VERSION}"], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"rotel {ROTEL_VERSION} could not be installed from PyPI: {exc} {detail[-300:]!r}")
        agent = next(iter(ROTEL_VENV.glob("lib/python*/site-packages/rotel/rotel-agent")), None)
        if agent is None:
            pytest.skip("the rotel wheel holds no rotel-agent binary on this platform")
    os.chmod(agent, 0o755)
    return str(agent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rotel:
    """rotel-agent receiving OTLP/HTTP on a free port and exporting OTLP/HTTP to `upstream`
    (a base URL: the exporter appends /v1/logs)."""

    def __init__(self, upstream: str, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "rotel.log"
        self.argv = [
            rotel_binary(), "start",
            "--otlp-http-endpoint", f"127.0.0.1:{self.port}", "--otlp-grpc-endpoint", f"127.0.0.1:{free_port()}",
            "--exporter", "otlp", "--otlp-exporter-protocol", "http", "--otlp-exporter-endpoint", upstream,
            "--batch-timeout", "50ms", "--debug-log", "logs", "--debug-log-verbosity", "detailed",
            # Should a loaded test machine keep the receiver from answering within rotel's default
            # 5 s, rotel would retry only 5 s later, backing off to 30 s: wait longer, retry sooner.
            "--otlp-exporter-request-timeout", "30s", "--otlp-exporter-retry-initial-backoff", "200ms",
            "--otlp-exporter-retry-max-backoff", "2s",
            "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(workdir / "rotel-agent.log"),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sink_url(self) -> str:
        return f"otlp+http://127.0.0.1:{self.port}/v1/logs"

    def __enter__(self) -> Rotel:
        self._out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:  # ready once its HTTP receiver accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"rotel did not start ({self.proc.returncode}): {self.output()[-2000:]}") from None
                time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
