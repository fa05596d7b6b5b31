"""A writer's folder, writers/<id>/: claiming it, its metadata, its segments and its marks.

Every file here is this writer's alone. The marks are what the leader and `status` read
about a writer: meta.json once at the claim, heartbeat.json renewed by the flusher (never
fsynced: 512 writers on NFS), finish.json once at the end. Their types are in _marks; the
writer fills them in here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .. import _files, _layout
from .._config import Config
from .._env import rank_from_env
from .._layout import Identity, Modes
from .._marks import Finish, Heartbeat, Meta
from .._record import writer_tag
from .._segment import SegmentWriter

logger = logging.getLogger("distwal")


class Folder:
    """writers/<id>/ of one writer. Unclaimed until claim(); claimed again, under a new id,
    by reclaim() after a wrongful adoption; forget() drops it in a forked child."""

    def __init__(self, config: Config, domain: str, modes: Modes) -> None:
        self.config = config
        self.domain = domain
        self.modes = modes
        self.dir_fd = -1
        self.segments: SegmentWriter | None = None
        self.finished = False  # the finish mark is written
        self._beats = 0

    @property
    def claimed(self) -> bool:
        return self.dir_fd >= 0

    def claim(self, identity: Identity, first_seq: int = 1, continues: str | None = None) -> None:
        """Create writers/<new id>/ with its metadata and first segment."""
        self.identity = identity
        self.id = _layout.format_writer_id(identity)
        self.tag = writer_tag(self.id)
        self.path = os.path.join(self.config.dir, _layout.WRITERS, self.id)
        writers_fd = _files.open_dir(os.path.dirname(self.path))
        try:
            self.dir_fd = _files.make_subdir(writers_fd, self.id, self.modes)
        finally:
            os.close(writers_fd)
        st = os.fstat(self.dir_fd)
        self._key = (st.st_dev, st.st_ino)
        self.meta = self._meta(first_seq, continues)
        _files.write_atomic(self.dir_fd, _layout.META, self.meta.to_bytes(), self.modes)
        self.segments = SegmentWriter(
            self.dir_fd, self.modes, self.config.segment_bytes, sync_on_seal=self.config.durability != "none"
        )

    def adopted(self) -> bool:
        """True when a leader moved our folder away, taking us for dead (another host's view)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell: carry on
        return (st.st_dev, st.st_ino) != self._key

    def reclaim(self, first_seq: int) -> None:
        """Continue in a new folder after a wrongful adoption: close this one, claim another
        whose meta says it continues this one from `first_seq`."""
        old = self.id
        self.close()
        if not os.path.isdir(os.path.join(self.config.dir, _layout.WRITERS)):
            logger.error(
                "distwal: %s was removed while writer %s ran; what it held on disk is gone; recreating it "
                "for what comes next", self.config.dir, old,
            )
            _files.prepare_dir(self.config.dir, self.modes)
            self.domain = _files.ensure_domain(self.config.dir, self.modes)
        self.claim(self.identity, first_seq=first_seq, continues=old)
        logger.warning("distwal: writer %s lost its folder (adopted, or removed); continuing as %s", old, self.id)

    def free_bytes(self) -> int:
        """Bytes the filesystem of the folder still gives us."""
        st = os.fstatvfs(self.dir_fd)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self.segments is not None:
            self.segments.close()
            self.segments = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def forget(self) -> None:
        """In a forked child: close the parent's descriptors and never touch its files."""
        try:
            self.close()  # closing a descriptor in the child leaves the parent's open
        except OSError:
            self.segments, self.dir_fd = None, -1
        self.finished = False
        self._beats = 0

    # -- the marks -------------------------------------------------------------------------

    def _meta(self, first_seq: int, continues: str | None) -> Meta:
        identity, config, rank = self.identity, self.config, rank_from_env()
        return Meta(
            writer=self.id,
            host=identity.host,
            boot_id=identity.boot_id,
            pid_ns=identity.pid_ns,
            pid=identity.pid,
            create_time=identity.create_time,
            rank=rank.rank,
            local_rank=rank.local_rank,
            world_size=rank.world_size,
            group_rank=rank.group_rank,
            attempt=rank.attempt,
            run=config.run_id,
            domain=self.domain,
            durability=config.durability,
            segment_bytes=config.segment_bytes,
            first_seq=first_seq,
            continues=continues,
            started=time.time(),
        )

    def write_heartbeat(
        self, state: str, logged_seq: int, durable_seq: int, at: tuple[int, int], dropped: int, error: str | None
    ) -> None:
        """`durable_seq` is the last durable seq; its block ends at `at` (segment, offset)."""
        self._beats += 1
        beat = Heartbeat(
            n=self._beats,
            ts=time.time(),
            state=state,
            logged_seq=logged_seq,
            durable_seq=durable_seq,
            durable_segment=at[0],
            durable_offset=at[1],
            dropped=dropped,
            error=error,
        )
        _files.write_atomic(self.dir_fd, _layout.HEARTBEAT, beat.to_bytes(), self.modes, durable=False)

    def write_finish(self, durable_seq: int, at: tuple[int, int], dropped: int, lost: int, end: dict[str, Any]) -> None:
        mark = Finish(durable_seq=durable_seq, segment=at[0], offset=at[1], ts=time.time(), dropped=dropped, lost=lost,
                      end=end)
        _files.write_atomic(self.dir_fd, _layout.FINISH, mark.to_bytes(), self.modes)
        self.finished = True
