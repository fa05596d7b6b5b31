"""otlp+http(s)://host:port/v1/logs: OTLP/HTTP logs (binary protobuf, gzip) into any OpenTelemetry collector.

One LogRecord per record: time_unix_nano from the record's ts, body = the record as an
AnyValue map, attributes distwal.writer, distwal.seq, distwal.epoch, distwal.run,
distwal.rank, distwal.local_rank and distwal.attempt (those the writer has). One
ResourceLogs per process (host, pid) with the resource attributes service.name
(DISTWAL_SERVICE_NAME, default "distwal"), host.name and process.pid.

Collectors neither deduplicate nor fence: delivery is at-least-once and (distwal.writer,
distwal.seq) identify a record for whoever queries it; a deposed leader's late request
is stored like any other. Responses follow the OTLP specification: 429/502/503/504 (and
other 5xx, timeouts, refused connections: distwal never gives up on a transient failure)
are retried honouring Retry-After; 400 refuses the data (the sender bisects down to the
record and keeps it as a dead letter); 413 splits the batch; 401/403 and every other 4xx
(a wrong URL, token or content type) pause sending. A 2xx with a `partial_success` that
rejected records is counted in `rejected_records` (sender.json, `distwal status`) and
logged: the collector dropped them and OTLP does not say which.

Encoding is the hot path: building a protobuf object per value from Python costs about
22 us a record here, so LogRecords are written straight into wire format, by an encoder
compiled for each record shape (2.1 us for append's 109-byte record, 3.9 us with a loop
over the values; tests check the bytes against opentelemetry-proto's own classes), while
the resource, the scope and the response use those classes. Values: str, bool, int (int64; larger
integers as strings, losslessly), float, list, mapping, null (an empty AnyValue), and
the strings "NaN", "Infinity" and "-Infinity" as the doubles that log() stored them for.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping

import httpx
import orjson

from .._config import ENV_SERVICE_NAME
from .._exceptions import ConfigError, SinkPaused, SinkRejected, SinkTooLarge, SinkUnavailable
from ._base import Batch, Chunk, Sink
from ._bearer import Bearer
from .http import CHECK_TIMEOUT, _retry_after

try:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
except ImportError:  # pragma: no cover - Config.validate() says the same at init()
    raise ConfigError(
        "the otlp+http(s):// sink needs the opentelemetry-proto package: pip install 'distwal[otlp]'"
    ) from None

logger = logging.getLogger("distwal")

DEFAULT_TIMEOUT = 30.0  # seconds per request
DEFAULT_REQUEST_RECORDS = 5000  # records per request (about 1.5 MB of protobuf for a 109-byte record)
DEFAULT_SERVICE_NAME = "distwal"
LOGS_PATH = "/v1/logs"  # the OTLP/HTTP default path for logs, used when the URL has none
RETRYABLE = (429, 502, 503, 504)  # OTLP/HTTP: retry these, honouring Retry-After
SCOPE = InstrumentationScope(name="distwal", version="1").SerializeToString()

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SPECIAL_DOUBLES = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


# -- protobuf wire format ----------------------------------------------------------------------
# Tags are (field number << 3) | wire type: 0 varint, 1 fixed64, 2 length-delimited.


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint_slow(n) for n in range(1 << 14)]  # lengths and seqs below 16384: one list index
_LOW14 = [_varint_slow(n | 1 << 14)[:2] for n in range(1 << 14)]  # a varint's first 2 bytes: n's low 14 bits


def _varint(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint_slow(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


_DOUBLE = struct.Struct("<Bd").pack  # AnyValue.double_value (4, fixed64): tag 0x21 + 8 bytes
_TIME = struct.Struct("<BQ").pack  # LogRecord.time_unix_nano (1, fixed64): tag 0x09 + 8 bytes
_FALSE, _TRUE = b"\x10\x00", b"\x10\x01"  # AnyValue.bool_value (2)


def _any(value: Any) -> bytes:
    """The AnyValue for a JSON value, as wire bytes (an empty message for null)."""
    kind = type(value)
    if kind is float:
        return _DOUBLE(0x21, value)
    if kind is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return _DOUBLE(0x21, special)
        return _field(b"\x0a", value.encode())
    if kind is dict:
        return _field(b"\x32", _kvlist(value))
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        number: int = value
        if 0 <= number < 16384:
            return b"\x18" + _SMALL[number]
        if _INT64_MIN <= number <= _INT64_MAX:
            return b"\x18" + _varint_slow(number & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
        return _field(b"\x0a", str(number).encode())  # beyond int64 (JSON allows up to 2**64 - 1)
    if kind is list:
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any(v)) for v in value]))
    return b""  # null


# A KeyValueList element (values, field 1) is `0a len KeyValue`, a KeyValue `0a len key 12 len
# AnyValue`: everything up to the AnyValue's length depends on the key alone (its "head").
_KEY_HEADS: dict[str, bytes] = {}
_MAX_KEYS = 4096  # bounded, so records with ever-new keys cannot grow it without limit


def _key_head(key: str) -> bytes:
    head = _KEY_HEADS.get(key)
    if head is None:
        head = _field(b"\x0a", key.encode()) + b"\x12"
        if len(_KEY_HEADS) >= _MAX_KEYS:
            _KEY_HEADS.clear()
        _KEY_HEADS[key] = head
    return head


def _element(head: bytes, value: Any) -> bytes:
    """A KeyValueList element: the key's head, then the value."""
    return _field(b"\x0a", head + _field(b"", _any(value)))


# -- plans: one encoder per record shape ------------------------------------------------------------
#
# A training loop logs the same keys with the same types record after record; only the values
# change. So the first mapping of a shape (its keys, in order) compiles a function for it: one
# unpacking of the values, one type check each, strings and ints from a per-key cache of whole
# elements, and one b"".join. Every run of fixed-size parts (floats, bools, nulls, constant
# heads, and nested mappings made of those only, whose lengths are then constant too) is one
# Struct.pack, with the constant bytes as `Ns` fields; other nested mappings go through their
# own plan. For append's record (5 keys, a nested mapping of 3 floats: one pack of 4 doubles)
# the plan takes 0.6 us, and finding it 0.13 us, against 2.0 us for the loop over the items
# it replaces (timeit, this machine). A mapping whose types differ from its plan's takes
# that loop (_kvlist_items), and a shape whose types changed for good gets a new plan.
#
# Keys and their heads reach the generated code as constants (h_v_0...), never as source text.

Plan = Callable[[dict[str, Any]], "bytes | None"]
_PLANS: dict[tuple[str, ...], Plan] = {}
_MISSES: dict[tuple[str, ...], int] = {}
_MAX_PLANS = 1024
_REPLAN_AFTER = 64  # records refused by a plan before its shape gets a new one
_MAX_CACHED = 256  # values per key whose elements a plan keeps


def _kvlist(mapping: dict[str, Any]) -> bytes:
    """A KeyValueList's content: one values (1) element per key."""
    keys = tuple(mapping)
    plan = _PLANS.get(keys)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
            _MISSES.clear()
        plan = _PLANS[keys] = _compile(keys, mapping)
    encoded = plan(mapping)
    if encoded is None:  # not the types the plan was made for
        misses = _MISSES[keys] = _MISSES.get(keys, 0) + 1
        if misses >= _REPLAN_AFTER:
            # The next record of this shape makes a new plan (pop: another sink's thread may
            # have done this already).
            _PLANS.pop(keys, None)
            _MISSES.pop(keys, None)
        return _kvlist_items(mapping)
    return encoded


def _kvlist_items(mapping: dict[str, Any]) -> bytes:
    """_kvlist without a plan: any types, one element at a time."""
    return b"".join([_element(_key_head(key), value) for key, value in mapping.items()])


def _cached_element(cache: dict[Any, bytes], head: bytes, value: Any) -> bytes:
    """A plan's str element that was not in its key's cache (kept there if small)."""
    element = _element(head, value)
    if len(element) < 256:
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        cache[value] = element
    return element


def _int_element(cache: dict[Any, bytes], heads: tuple[bytes, ...], value: int, head: bytes) -> bytes:
    """A plan's int element that was not in its key's cache: `heads[n]` is the element up to
    an n-byte varint. A step that grows record after record misses every time, and this
    costs 0.3 us where building the element from the key's head took 1.1 us."""
    if 0 <= value < 1 << 28:
        number = _SMALL[value] if value < 16384 else _LOW14[value & 0x3FFF] + _SMALL[value >> 14]
        element = heads[len(number)] + number
    else:
        element = _element(head, value)
    if len(cache) >= _MAX_CACHED:
        cache.clear()
    cache[value] = element
    return element


def _dict_element(head: bytes, value: dict[str, Any]) -> bytes:
    inner = _kvlist(value)
    size = len(inner)
    encoded = b"\x32" + (_SMALL[size] if size < 16384 else _varint_slow(size)) + inner
    size = len(encoded)
    pair = head + (_SMALL[size] if size < 16384 else _varint_slow(size)) + encoded
    size = len(pair)
    return b"\x0a" + (_SMALL[size] if size < 16384 else _varint_slow(size)) + pair


def _compile(keys: tuple[str, ...], sample: dict[str, Any]) -> Plan:
    """The plan for mappings with these keys, in this order, and the value types of `sample`."""
    if not keys:
        return lambda mapping: b""
    constants: dict[str, Any] = {"cached": _cached_element, "cached_int": _int_element, "nested": _dict_element,
                                 "element": _element}
    lines, parts = _plan_of(keys, sample, "v", constants)
    # Runs of fixed-size parts become one Struct.pack each (constants as `Ns` fields).
    items: list[str] = []
    run: list[tuple[str, Any]] = []

    def flush() -> None:
        if all(kind == "const" for kind, _ in run):
            if run:
                constants[f"b{len(items)}"] = b"".join(payload for _, payload in run)
                items.append(f"b{len(items)}")
        else:
            fmt = "<"
            args: list[str] = []
            for kind, payload in run:
                if kind == "const":
                    constants[f"b{len(items)}_{len(args)}"] = payload
                    fmt += f"{len(payload)}s"
                    args.append(f"b{len(items)}_{len(args)}")
                else:
                    fmt += _FIXED[kind][0]
                    args.append(payload)
            constants[f"pack{len(items)}"] = struct.Struct(fmt).pack
            items.append(f"pack{len(items)}({', '.join(args)})")
        run.clear()

    for kind, payload in parts:
        if kind == "var":
            flush()
            items.append(payload)
        elif kind == "const" and run and run[-1][0] == "const":
            run[-1] = ("const", run[-1][1] + payload)
        else:
            run.append((kind, payload))
    flush()
    body = "\n".join(f"    {line}" for line in lines)
    source = f"def plan(v):\n{body}\n    return b''.join(({', '.join(items)},))\n"
    exec(source, constants)  # noqa: S102 - generated from the sample's types; keys are constants
    plan: Plan = constants["plan"]
    return plan


# Fixed-size parts: their Struct format and size.
_FIXED = {"double": ("d", 8), "bool": ("?", 1)}


def _plan_of(keys: tuple[str, ...], sample: dict[str, Any], var: str,
             constants: dict[str, Any]) -> tuple[list[str], list[tuple[str, Any]]]:
    """The statements that unpack and check mapping `var`, and the parts of its content:
    ("const", bytes), ("double" or "bool", the expression of a value), ("var", an expression
    of bytes). A nested mapping of fixed-size parts only is inlined (its lengths are constant)."""
    if not keys:
        return [], []
    names = [f"{var}_{i}" for i in range(len(keys))]
    checks: list[str] = []
    nested: list[str] = []
    parts: list[tuple[str, Any]] = []
    for name, key, value in zip(names, keys, sample.values()):
        head, kind = _key_head(key), type(value)
        constants[f"h_{name}"] = head
        if kind is float:
            checks.append(f"type({name}) is float")
            parts += [("const", b"\x0a" + _varint(len(head) + 10) + head + b"\x09\x21"), ("double", name)]
        elif kind is bool:
            checks.append(f"type({name}) is bool")
            parts += [("const", b"\x0a" + _varint(len(head) + 3) + head + b"\x02\x10"), ("bool", name)]
        elif value is None:
            checks.append(f"{name} is None")
            parts.append(("const", _element(head, None)))
        elif kind is int:
            constants[f"c_{name}"] = {}
            # The element up to a varint of 1 to 4 bytes (0a len head len 18): see _int_element.
            constants[f"i_{name}"] = tuple(b"\x0a" + _varint(len(head) + 2 + n) + head + bytes([1 + n]) + b"\x18"
                                           for n in range(5))
            checks.append(f"type({name}) is int")
            parts.append(("var", f"(c_{name}.get({name}) or cached_int(c_{name}, i_{name}, {name}, h_{name}))"))
        elif kind is str:
            constants[f"c_{name}"] = {}
            checks.append(f"type({name}) is str")
            parts.append(("var", f"(c_{name}.get({name}) or cached(c_{name}, h_{name}, {name}))"))
        elif kind is dict:
            inner_lines, inner_parts = _plan_of(tuple(value), value, name, constants)
            if all(part_kind != "var" for part_kind, _ in inner_parts):
                constants[f"k_{name}"] = tuple(value)
                checks.append(f"type({name}) is dict and tuple({name}) == k_{name}")
                nested += inner_lines
                size = sum(len(p) if k == "const" else _FIXED[k][1] for k, p in inner_parts)
                encoded_size = 1 + len(_varint(size)) + size  # 32 len KeyValueList
                pair = head + _varint(encoded_size) + b"\x32" + _varint(size)
                parts += [("const", b"\x0a" + _varint(len(pair) + size) + pair), *inner_parts]
            else:
                checks.append(f"type({name}) is dict")
                parts.append(("var", f"nested(h_{name}, {name})"))
        else:
            checks.append(f"type({name}) is list")
            parts.append(("var", f"element(h_{name}, {name})"))
    lines = [f"{', '.join(names)}, = {var}.values()", f"if not ({' and '.join(checks)}):", "    return None"]
    return lines + nested, parts


# LogRecord.attributes (6) element for distwal.seq, up to its value's varint, by that varint's length.
_SEQ_HEADS = {n: _field(b"\x32", _key_head("distwal.seq") + _varint(n + 1) + b"\x18" + b"\0" * n)[: -n]
              for n in range(1, 11)}


def _attribute(key: str, value: Any) -> bytes:
    """LogRecord.attributes (6) / Resource.attributes (1) content: a KeyValue."""
    return _key_head(key) + _field(b"", _any(value))


def _log_records(chunk: Chunk, epoch: int) -> list[bytes]:
    """ScopeLogs.log_records (2) elements, one per record of the chunk, in pieces to be joined.

    The attributes every record of a writer shares are encoded once per chunk; per record
    only the time, the body and distwal.seq are.
    """
    meta = chunk.meta
    shared = b"".join(
        _field(b"\x32", _attribute(key, value))
        for key, value in (("distwal.writer", chunk.writer), ("distwal.epoch", epoch), ("distwal.run", meta.get("run")),
                           ("distwal.rank", meta.get("rank")), ("distwal.local_rank", meta.get("local_rank")),
                           ("distwal.attempt", meta.get("attempt")))
        if value is not None
    )
    # Each record's pieces go into one list that encode_request() joins once: no bytes object
    # per record. A LogRecord is `12 len` (its element head), `09 time`, `2a len 32 len` (the
    # body's head), the map, `tail` (the shared attributes and distwal.seq's head) and the seq.
    # Records of one shape have maps of one size, and seqs' varints change length rarely: the
    # heads are made again only when either changes. Times and seqs are encoded by one
    # comprehension each, the JSON decoded through map(). Together 10% less than measuring and
    # looking up heads per record (timeit over a chunk of append's records: 1.98 -> 1.88 us).
    out: list[bytes] = []
    extend = out.extend
    kvlist, small, low, stamp, plans = _kvlist, _SMALL, _LOW14, _TIME, _PLANS
    tails = {n: shared + head for n, head in _SEQ_HEADS.items()}
    stamps = [stamp(0x09, int(ts * 1e9)) for ts in chunk.ts]
    # seqs pass 16384 early in a run: two bytes from a table and the rest from _SMALL up to 2**28
    numbers = [small[seq] if seq < 16384 else low[seq & 0x3FFF] + small[seq >> 14] if seq < 1 << 28
               else _varint_slow(seq) for seq in range(chunk.first_seq, chunk.first_seq + len(chunk.lines))]
    sizes = (-1, -1)  # the map's and the seq's sizes the heads below were made for
    record_head = body_head = tail = b""
    for when, number, data in zip(stamps, numbers, map(orjson.loads, chunk.lines)):
        if type(data) is dict:
            plan = plans.get(tuple(data))  # _kvlist's first steps, inlined
            inner = plan(data) if plan is not None else None
            if inner is None:
                inner = kvlist(data)
            if (len(inner), len(number)) != sizes:
                sizes = size, seq_size = len(inner), len(number)
                tail = tails[seq_size]
                body = b"\x32" + _varint(size)  # AnyValue.kvlist_value and its length; the map follows
                body_head = b"\x2a" + _varint(len(body) + size) + body
                record_head = b"\x12" + _varint(9 + len(body_head) + size + len(tail) + seq_size)
            extend((record_head, when, body_head, inner, tail, number))
        else:
            body = _any(data)
            record = b"".join((when, b"\x2a", _varint(len(body)), body, tails[len(number)], number))
            extend((b"\x12", _varint(len(record)), record))
    return out


def encode_request(batch: Batch, service_name: str) -> bytes:
    """The ExportLogsServiceRequest for `batch`: one ResourceLogs per (host, pid), in first-seen order."""
    groups: dict[tuple[Any, Any], list[bytes]] = {}
    for chunk in batch.chunks:
        key = (chunk.meta.get("host"), chunk.meta.get("pid"))
        groups.setdefault(key, []).extend(_log_records(chunk, batch.epoch))
    parts = []
    for (host, pid), records in groups.items():
        resource = _resource(service_name, host, pid)
        scope_logs = _field(b"\x0a", SCOPE) + b"".join(records)
        resource_logs = _field(b"\x0a", resource) + _field(b"\x12", scope_logs)
        parts.append(_field(b"\x0a", resource_logs))
    return b"".join(parts)


def _resource(service_name: str, host: Any, pid: Any) -> bytes:
    attributes = [KeyValue(key="service.name", value=AnyValue(string_value=service_name))]
    if host is not None:
        attributes.append(KeyValue(key="host.name", value=AnyValue(string_value=str(host))))
    if isinstance(pid, int):
        attributes.append(KeyValue(key="process.pid", value=AnyValue(int_value=pid)))
    return bytes(Resource(attributes=attributes).SerializeToString())


# -- the sink --------------------------------------------------------------------------------------


class OTLPSink(Sink):
    """POST batches as OTLP/HTTP ExportLogsServiceRequests. Pass `client` to customise transport.

        sink = OTLPSink("otlp+http://collector:4318/v1/logs")
        sink.write(batch)            # stored, or a SinkError subclass as the module docstring says
        sink.rejected_records        # records collectors reported rejected in a partial_success
    """

    scheme = "otlp"

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        token: str | None = None,
        service_name: str | None = None,
        compress: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        request_records: int = DEFAULT_REQUEST_RECORDS,
    ) -> None:
        self.url = endpoint_of(url)
        self.compress = compress
        self.request_records = request_records
        self._pool: ThreadPoolExecutor | None = None
        self.service_name = service_name or os.environ.get(ENV_SERVICE_NAME, "").strip() or DEFAULT_SERVICE_NAME
        headers = {"Content-Type": "application/x-protobuf"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        self._bearer = bearer = Bearer(token, client, timeout, **headers)
        self._client, self._headers = bearer.client, bearer.headers

    def write(self, batch: Batch) -> None:
        """Send `batch` as requests of at most `request_records` records, one at a time, each
        encoded while the one before is on the wire: the collector's decoding, and the round
        trip to a remote one, overlap distwal's encoding (benchmarks/otlp.py compares it with
        one request per batch), and requests stay well below collectors' size limits. If any
        request fails the batch fails and is sent again later, whole: a collector may then hold
        copies of the requests it had accepted (at-least-once; (distwal.writer, distwal.seq)
        tell them apart).
        """
        parts = _split(batch, self.request_records)
        if len(parts) == 1:
            self._send(self._encode(parts[0]), len(batch))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distwal-otlp")
        in_flight: Future[None] | None = None
        try:
            for part in parts:
                body = self._encode(part)
                if in_flight is not None:
                    in_flight.result()  # the previous request's SinkError ends the batch here
                in_flight = self._pool.submit(self._send, body, len(part))
        except BaseException:
            if in_flight is not None:
                wait([in_flight])  # never leave a request of a failed batch running behind us
            raise
        assert in_flight is not None
        in_flight.result()

    def check(self) -> None:
        """POST an empty ExportLogsServiceRequest (no records: nothing stored, and OTLP says a
        collector answers it 200): any answer but 401/403/404 and the like, 5xx or 429 shows
        the address reachable and the token accepted."""
        body = gzip.compress(b"", compresslevel=1) if self.compress else b""
        try:
            response = self._client.post(self.url, content=body, headers=self._headers, timeout=CHECK_TIMEOUT)
        except httpx.TimeoutException:
            raise SinkUnavailable(f"{self.url}: no answer within {CHECK_TIMEOUT:.0f}s") from None
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if 200 <= response.status_code < 300 or response.status_code in (400, 413, 422):
            return  # it answered and did not refuse us: at most it has views on an empty request
        self._raise_for(response)

    def _encode(self, batch: Batch) -> bytes:
        try:
            return encode_request(batch, self.service_name)
        except (orjson.JSONDecodeError, TypeError, ValueError, OverflowError, RecursionError, struct.error) as exc:
            # e.g. a timestamp that is no time: the sender bisects down to that record's dead letter
            raise SinkRejected(f"a record cannot be encoded as an OTLP LogRecord: {exc}") from None

    def _send(self, body: bytes, records: int) -> None:
        if self.compress:
            body = gzip.compress(body, compresslevel=1)  # zlib lets go of the GIL: it overlaps encoding too
        try:
            response = self._client.post(self.url, content=body, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise SinkUnavailable(f"{self.url}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise SinkUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if 200 <= response.status_code < 300:
            self._count_partial_success(response, records)
            return
        self._raise_for(response)

    def _count_partial_success(self, response: httpx.Response, sent: int) -> None:
        rejected, message = _partial_success(response)
        if rejected:
            self.rejected_records += rejected
            logger.warning("distwal: %s accepted a request of %d records but rejected %d of them: %s",
                           self.url, sent, rejected, message or "(no message)")

    def _raise_for(self, response: httpx.Response) -> None:
        status = response.status_code
        text = _error_text(response)
        text = self._bearer.mask(text)
        detail = f"{self.url} answered {status} {response.reason_phrase}: {text[:200]!r}"
        if status in RETRYABLE or status >= 500 or status == 408:
            raise SinkUnavailable(detail, retry_after=_retry_after(response.headers.get("Retry-After")))
        if status == 413:
            raise SinkTooLarge(detail)
        if status in (400, 422):
            raise SinkRejected(detail)
        raise SinkPaused(detail)  # 401, 403, 404, 405, 415...: the URL, token or collector, not the data

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._client.close()


def _split(batch: Batch, size: int) -> list[Batch]:
    """`batch` in consecutive parts of at most `size` records (chunks split where needed)."""
    if len(batch) <= size:
        return [batch]
    parts: list[Batch] = []
    current: list[Chunk] = []
    room = size
    for chunk in batch.chunks:
        while len(chunk) > room:
            head, chunk = chunk.split(room)
            parts.append(Batch(batch.epoch, batch.domain, (*current, head)))
            current, room = [], size
        if len(chunk):
            current.append(chunk)
            room -= len(chunk)
        if room == 0:
            parts.append(Batch(batch.epoch, batch.domain, tuple(current)))
            current, room = [], size
    if current:
        parts.append(Batch(batch.epoch, batch.domain, tuple(current)))
    return parts


def endpoint_of(url: str) -> str:
    """The HTTP URL of an otlp+http(s):// sink URL; /v1/logs when it names no path."""
    scheme, sep, rest = url.partition("://")
    transport = scheme.lower().removeprefix("otlp+")
    if not sep or transport not in ("http", "https") or not rest.split("/", 1)[0]:
        raise ConfigError(f"{url!r} is not an OTLP sink URL: write otlp+http://host:4318/v1/logs (or otlp+https://)")
    parsed = httpx.URL(f"{transport}://{rest}")
    if parsed.path in ("", "/"):
        parsed = parsed.copy_with(path=LOGS_PATH)
    return str(parsed)


def _partial_success(response: httpx.Response) -> tuple[int, str]:
    """(rejected_log_records, error_message) of a 2xx reply; (0, "") for an empty body."""
    body = response.content
    if not body:
        return 0, ""
    if "json" in response.headers.get("Content-Type", ""):
        try:
            parsed: Mapping[str, Any] = orjson.loads(body).get("partialSuccess") or {}
            return int(parsed.get("rejectedLogRecords") or 0), str(parsed.get("errorMessage") or "")
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return 0, ""
    try:
        reply = ExportLogsServiceResponse.FromString(body)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; a 2xx with an unreadable body still acknowledges
        logger.debug("distwal: %s sent a 2xx with a body that is not an ExportLogsServiceResponse", response.url)
        return 0, ""
    return reply.partial_success.rejected_log_records, reply.partial_success.error_message


def _error_text(response: httpx.Response) -> str:
    """What a failed reply says: google.rpc.Status.message (field 2) of a protobuf body, else the text."""
    body = response.content
    if "protobuf" in response.headers.get("Content-Type", ""):
        message = _status_message(body)
        if message is not None:
            return message
    return body[:400].decode("utf-8", "replace")


def _status_message(body: bytes) -> str | None:
    pos = 0
    try:
        while pos < len(body):
            tag, pos = _read_varint(body, pos)
            kind = tag & 7
            if kind == 0:
                _, pos = _read_varint(body, pos)
            elif kind == 2:
                size, pos = _read_varint(body, pos)
                if tag >> 3 == 2:
                    return body[pos : pos + size].decode("utf-8", "replace")
                pos += size
            else:
                return None
    except IndexError:
        return None
    return None


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
