"""Child processes of the OTLP benchmark (benchmarks/otlp.py): `python _otlp_child.py ROLE`.

  receiver   tests/helpers/otlp.py's OTLPReceiver counting records (each request gunzipped and
             parsed with opentelemetry-proto, as a collector does); prints its URL, serves until
             stdin closes
  worker     runs jobs sent as JSON lines, one JSON result each:
               build DIR URL     the requests OTLPSink would send for the backlog in DIR: the
                                 library's Sender drains it into a MockSink; each batch is split
                                 and encoded as OTLPSink does (not timed); kept for `raw`, `encode`
               sender DIR URL N  timed: the library's Sender with OTLPSink draining DIR into URL
                                 (request_records: OTLPSink's, e.g. one request per batch)
               raw URL           timed: POST the built requests (gzip level 1 in the loop, as
                                 OTLPSink does) with an httpx client like OTLPSink's
               encode            timed: encode_request() alone over the built requests' records
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import sys
import time
from typing import Any

from _ship_child import _cpu, drain, emit, leading

pc = time.perf_counter
_BUILT: dict[str, Any] = {"batches": [], "bodies": []}


def role_receiver() -> None:
    import threading

    from helpers.otlp import OTLPReceiver

    receiver = OTLPReceiver(keep=False)
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    emit({"url": receiver.url, "sink_url": receiver.sink_url, "pid": os.getpid()})
    sys.stdin.read()


def job_build(job: dict[str, Any]) -> dict[str, Any]:
    from distwal.sinks import MockSink
    from distwal.sinks.otlp import DEFAULT_REQUEST_RECORDS, DEFAULT_SERVICE_NAME, _split, encode_request

    batches: list[Any] = []
    with leading(job["dir"], job["url"], sink=MockSink(batches.append)) as sender:
        while sender.cycle():
            pass
    # The requests OTLPSink sends: each batch in parts of at most DEFAULT_REQUEST_RECORDS.
    parts = [part for b in batches for part in _split(b, DEFAULT_REQUEST_RECORDS)]
    bodies = [encode_request(part, DEFAULT_SERVICE_NAME) for part in parts]
    _BUILT["batches"], _BUILT["bodies"] = parts, bodies
    n = sum(len(b) for b in batches)
    return {"n": n, "requests": len(bodies), "bytes": sum(map(len, bodies)),
            "gzip_bytes": sum(len(gzip.compress(b, compresslevel=1)) for b in bodies)}


def job_sender(job: dict[str, Any]) -> dict[str, Any]:
    from distwal.sinks.otlp import OTLPSink

    sink = OTLPSink(job["url"], **({"request_records": job["request_records"]} if job.get("request_records") else {}))
    with leading(job["dir"], job["url"], sink=sink) as sender:
        return drain(sender, job["records"], max_errors=20)


def job_raw(job: dict[str, Any]) -> dict[str, Any]:
    import httpx

    client = httpx.Client(timeout=60, verify=True)
    headers = {"Content-Type": "application/x-protobuf", "User-Agent": "distwal/1", "Content-Encoding": "gzip"}
    n = sum(len(b) for b in _BUILT["batches"])
    gc.collect()
    try:
        c0, t0 = _cpu(), pc()
        for body in _BUILT["bodies"]:
            response = client.post(job["url"], content=gzip.compress(body, compresslevel=1), headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{job['url']} answered {response.status_code}")
        t1, c1 = pc(), _cpu()
    finally:
        client.close()
    return {"n": n, "s": t1 - t0, "cpu_s": c1 - c0}


def job_encode(job: dict[str, Any]) -> dict[str, Any]:
    from distwal.sinks.otlp import DEFAULT_SERVICE_NAME, encode_request

    batches = _BUILT["batches"]
    n = sum(len(b) for b in batches)
    gc.collect()
    c0, t0 = _cpu(), pc()
    for batch in batches:
        encode_request(batch, DEFAULT_SERVICE_NAME)
    return {"n": n, "s": pc() - t0, "cpu_s": _cpu() - c0}


def role_worker() -> None:
    jobs = {"build": job_build, "sender": job_sender, "raw": job_raw, "encode": job_encode}
    emit({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        job = json.loads(line)
        emit(jobs[job["kind"]](job))


if __name__ == "__main__":
    {"receiver": role_receiver, "worker": role_worker}[sys.argv[1]]()
