"""The on-disk framing: records travel in checksummed blocks, one block per group commit.

    header (36 bytes, little endian)
      magic      4s   b"DWB2"
      count      u32  records in the block
      first_seq  u64  seq of the first record; the others follow contiguously
      writer     u64  writer_tag() of the writer folder's name
      body_len   u32  bytes after the header
      body_crc   u32  CRC-32 of the body
      header_crc u32  CRC-32 of the 24 bytes before it, so a resync can trust a header it finds
    body
      count x f64     the unix time of each log() call
      count x line    the record as orjson wrote it, each followed by b"\\n"

Why blocks and not a frame per record: a block is what one write() and one fdatasync make
durable together, so it is the natural unit of atomicity; and building it costs a few C
calls however many records it holds (array.tobytes, zlib.crc32), where a
per-record header would cost about 0.3 us of Python per record on the flusher thread,
which holds the GIL the caller needs. The delimiter is a newline because orjson never
emits one inside a document. The checksum is CRC-32 from zlib: in the standard library,
it releases the GIL on large buffers, and it catches torn writes and bit flips, which is
its job here (the sink, not the checksum, defends against malice). Blocks are capped
(BLOCK_BYTES), so damage costs at most one block of records.

Why the header names its writer: a valid block copied into another writer's segment (a
stray cp, a restore from the wrong backup) would otherwise read back as that writer's
records under its seqs. Readers pass the tag of the folder they read and take a block
with another tag for damage. Format 1 (b"DWB1", 28-byte header) had no tag; its files
are not read.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass

MAGIC = b"DWB2"
HEADER = struct.Struct("<4sIQQIII")
HEADER_SIZE = HEADER.size
_HEADER_PREFIX = struct.Struct("<4sIQQII")
BLOCK_BYTES = 1 << 20  # payload bytes per block, unless one record is larger
_TS_SIZE = 8
_CRC_PIECE = 4096  # bytes: below zlib's 5 KiB threshold for releasing the GIL
_SWAP = sys.byteorder != "little"


def writer_tag(writer_id: str) -> int:
    """The 64-bit tag that writer `writer_id` stamps on its blocks."""
    name = writer_id.encode("utf-8", "surrogateescape")  # as the file system spells it
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little")


def encode_header(writer: int, first_seq: int, count: int, body_len: int, body_crc: int) -> bytes:
    prefix = _HEADER_PREFIX.pack(MAGIC, count, first_seq, writer, body_len, body_crc)
    return prefix + struct.pack("<I", zlib.crc32(prefix))


def encode_block(writer: int, first_seq: int, ts: bytes, payload: bytes) -> bytes:
    """A whole block as bytes: header, timestamps, payload."""
    return b"".join(Sealed.of(first_seq, ts, payload).parts(writer))


@dataclass(frozen=True)
class Sealed:
    """A block held in memory until written: its body and checksum are fixed when sealed,
    its header is made at write time (the writer's tag changes if it must reincarnate)."""

    first_seq: int
    ts: bytes
    payload: bytes | bytearray
    crc: int

    @classmethod
    def of(cls, first_seq: int, ts: bytes, payload: bytes | bytearray) -> Sealed:
        # No copy of the payload, and a CRC that keeps the GIL (see crc32_holding_gil).
        return cls(first_seq, ts, payload, crc32_holding_gil(payload, crc32_holding_gil(ts)))

    @property
    def count(self) -> int:
        return len(self.ts) // _TS_SIZE

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    def parts(self, writer: int) -> list[bytes | bytearray]:
        """Header, timestamps and payload, ready for one writev."""
        header = encode_header(writer, self.first_seq, self.count, len(self.ts) + len(self.payload), self.crc)
        return [header, self.ts, self.payload]

    @property
    def size(self) -> int:
        """Bytes on disk, header included."""
        return HEADER_SIZE + len(self.ts) + len(self.payload)

    def split(self, limit: int) -> tuple[Sealed, Sealed] | None:
        """The same records as two blocks, the first as large as fits in `limit` bytes;
        None when no record boundary allows it (one record, or not even one fits). For a
        disk with room for part of a block."""
        count, payload = self.count, self.payload
        budget = limit - HEADER_SIZE  # for the first block's timestamps and lines
        if count < 2 or budget < _TS_SIZE + 1:
            return None
        end = k = 0  # the first k records end at payload[end]: take as many as fit
        while k < count - 1:
            following = payload.find(b"\n", end) + 1
            if (k + 1) * _TS_SIZE + following > budget:
                break
            end, k = following, k + 1
        if k == 0:
            return None
        cut = k * _TS_SIZE
        return (
            Sealed.of(self.first_seq, self.ts[:cut], payload[:end]),
            Sealed.of(self.first_seq + k, self.ts[cut:], payload[end:]),
        )


def crc32_holding_gil(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """zlib.crc32 in pieces small enough that zlib keeps the GIL (it lets go above 5 KiB).

    The writer's flusher calls this: letting go of the GIL is cheap, getting it back from a
    caller busy logging costs up to a switch interval (5 ms), once per call. About 0.3 ms
    per MiB with the GIL held is the better deal.
    """
    view = memoryview(data)
    for start in range(0, len(view), _CRC_PIECE):
        crc = zlib.crc32(view[start : start + _CRC_PIECE], crc)
    return crc


def timestamps_bytes(ts: "array[float]") -> bytes:
    """The timestamps section of a block, little endian whatever the machine."""
    if _SWAP:
        ts = array("d", ts)
        ts.byteswap()
    return ts.tobytes()


@dataclass(frozen=True)
class Header:
    count: int
    first_seq: int
    body_len: int
    body_crc: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def parse_header(raw: bytes, writer: int) -> Header | None:
    """The header in `raw` (HEADER_SIZE bytes), or None when it is not a valid header of
    a block by `writer` (a writer_tag)."""
    if len(raw) < HEADER_SIZE or raw[:4] != MAGIC:
        return None
    magic, count, first_seq, tag, body_len, body_crc, header_crc = HEADER.unpack_from(raw)
    if zlib.crc32(raw[: HEADER_SIZE - 4]) != header_crc or tag != writer:
        return None
    if count == 0 or first_seq == 0 or body_len < count * (_TS_SIZE + 1):
        return None
    return Header(count, first_seq, body_len, body_crc)


def decode_body(header: Header, body: bytes) -> tuple["array[float]", list[bytes]] | None:
    """Timestamps and record lines of a block, or None when the body does not match its header."""
    if len(body) != header.body_len or zlib.crc32(body) != header.body_crc:
        return None
    split = header.count * _TS_SIZE
    ts = array("d")
    ts.frombytes(body[:split])
    if _SWAP:
        ts.byteswap()
    lines = body[split:].split(b"\n")
    if len(lines) != header.count + 1 or lines[-1]:
        return None
    lines.pop()
    return ts, lines
