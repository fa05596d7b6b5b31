"""Careful file operations inside a distwal directory.

Everything is opened relative to a directory descriptor with O_NOFOLLOW, so a symlink
planted there is never followed. Small files are replaced atomically (write_atomic) or
created once (create_once, which also works on NFS); none of these trust what they read.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from typing import Any

import orjson

from ._exceptions import ConfigError, LayoutError
from ._layout import DOMAIN, WRITERS, Modes

MAX_SMALL_FILE = 1 << 16  # bytes: metadata, heartbeat and marks are tiny
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- the directory -------------------------------------------------------------------


def prepare_dir(path: str, modes: Modes) -> None:
    """Create the run directory if needed and refuse one that is unsafe or unwritable."""
    try:
        created = not os.path.exists(path)
        os.makedirs(path, mode=modes.dir, exist_ok=True)
        if created:
            os.chmod(path, modes.dir)  # exact bits (setgid for a shared group) whatever the umask
    except OSError as exc:
        raise ConfigError(
            f"cannot create directory {path}: {exc.strerror}; create it yourself or set DISTWAL_DIR "
            "to a writable path"
        ) from None
    check_dir(path)
    writers = os.path.join(path, WRITERS)
    try:
        os.mkdir(writers, modes.dir)
        os.chmod(writers, modes.dir)
        fsync_path(path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {writers}: {exc.strerror}; fix the permissions of {path}") from None
    if not stat.S_ISDIR(os.lstat(writers).st_mode):
        raise ConfigError(f"{writers} is not a directory (a symlink or file was planted there): remove it")


def check_dir(path: str) -> None:
    """Raise ConfigError unless `path` is a directory this process may use safely."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot use directory {path}: {exc.strerror}; set DISTWAL_DIR to a usable path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory: set DISTWAL_DIR to a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"directory {path} is world-writable without the sticky bit, so any user could replace "
            f"its files: run `chmod o-w {path}` (or `chmod +t`), or use another directory"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"directory {path} is not writable by this user: fix its permissions or set DISTWAL_DIR "
            "to a writable path"
        )


def open_dir(path: str, dir_fd: int | None = None) -> int:
    """A descriptor of the directory `path`; a symlink in its last component is refused."""
    return os.open(path, _O_DIR, dir_fd=dir_fd)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_subdir(root: str, name: str, modes: Modes) -> int:
    """A descriptor of root/name, created if missing; LayoutError if something else is there."""
    root_fd = open_dir(root)
    try:
        try:
            return make_subdir(root_fd, name, modes)
        except FileExistsError:
            pass
        try:
            return open_dir(name, dir_fd=root_fd)
        except OSError:
            raise LayoutError(
                f"{os.path.join(root, name)} is not a directory (a symlink or file was planted there): remove it"
            ) from None
    finally:
        os.close(root_fd)


def remove_folder(parent_fd: int, name: str, dir_fd: int) -> None:
    """Remove a writer folder: its files through dir_fd, then the folder. Never follows a link;
    a subdirectory planted inside is left, with the folder, and a warning."""
    for entry in os.listdir(dir_fd):
        try:
            os.unlink(entry, dir_fd=dir_fd)
        except IsADirectoryError:
            pass
        except FileNotFoundError:
            pass
    try:
        os.rmdir(name, dir_fd=parent_fd)
        os.fsync(parent_fd)
    except OSError as exc:
        import logging

        logging.getLogger("distwal").warning("distwal: cannot remove folder %s: %s", name, exc.strerror)


def make_subdir(parent_fd: int, name: str, modes: Modes) -> int:
    """Create directory `name` under parent_fd, make it durable, and return its descriptor."""
    os.mkdir(name, modes.dir, dir_fd=parent_fd)
    fd = open_dir(name, dir_fd=parent_fd)
    os.fchmod(fd, modes.dir)  # exact bits whatever the umask
    os.fsync(parent_fd)
    return fd


def create_file(dir_fd: int, name: str, modes: Modes, flags: int = os.O_WRONLY) -> int:
    """Create `name` exclusively (never through a symlink) with exact permission bits."""
    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, modes.file, dir_fd=dir_fd)
    os.fchmod(fd, modes.file)
    return fd


def write_atomic(dir_fd: int, name: str, data: bytes, modes: Modes, durable: bool = True) -> None:
    """Replace `name` with `data` so a reader sees the old or the new file, never a mix.

    durable=True: fsync the file, rename, fsync the directory (the order that survives a
    machine crash). durable=False is for heartbeats, which are never fsynced.
    """
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = create_file(dir_fd, tmp, modes)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp)  # a full disk must not leave temp files behind
        raise
    os.close(fd)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    if durable:
        os.fsync(dir_fd)


def read_json(dir_fd: int, name: str, limit: int = MAX_SMALL_FILE) -> Any:
    """Parse a small JSON file without following symlinks; None when it does not exist."""
    fd = open_regular(dir_fd, name)
    if fd is None:
        return None
    try:
        data = _read_upto(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LayoutError(f"{name} is larger than {limit} bytes: not a distwal file")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LayoutError(f"{name} is not valid JSON") from None


def _read_upto(fd: int, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit:
        part = os.read(fd, limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def exists(dir_fd: int, name: str) -> bool:
    """True when `name` is a regular file (a symlink or anything else does not count)."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_root_json(root: str, name: str, limit: int = MAX_SMALL_FILE) -> dict[str, Any] | None:
    """A JSON object kept directly in the run directory; None if absent, damaged or unreadable."""
    try:
        fd = open_dir(root)
    except OSError:
        return None
    try:
        return read_json_quietly(fd, name, limit)
    finally:
        os.close(fd)


def write_root_json(root: str, name: str, body: Any, modes: Modes, durable: bool = True) -> None:
    """Replace a JSON file kept directly in the run directory (see write_atomic)."""
    fd = open_dir(root)
    try:
        write_atomic(fd, name, orjson.dumps(body), modes, durable)
    finally:
        os.close(fd)


def read_json_quietly(dir_fd: int, name: str, limit: int = MAX_SMALL_FILE) -> dict[str, Any] | None:
    """read_json for a JSON object that may be mid-replace or damaged: None instead of an error."""
    try:
        found = read_json(dir_fd, name, limit)
    except (LayoutError, OSError):
        return None
    return found if isinstance(found, dict) else None


def open_regular(dir_fd: int, name: str) -> int | None:
    """Open `name` for reading if it is a regular file; None if missing, a link, a fifo, ...

    O_NONBLOCK keeps a planted fifo from hanging the open; O_NOFOLLOW refuses a symlink.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def create_once(dir_fd: int, name: str, data: bytes, modes: Modes) -> bool:
    """Create `name` holding `data` unless it exists; True if this call created it.

    The file is complete and durable before its name appears: it is written under a
    temporary name and linked, and link() fails if the name exists, so exactly one
    creator wins, also on NFS.
    """
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = create_file(dir_fd, tmp, modes)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, tmp)
        raise
    os.close(fd)
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        os.fsync(dir_fd)
        return True
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(dir_fd, tmp)


def copy_once(src: int, start: int, end: int, dir_fd: int, name: str, modes: Modes) -> int:
    """Copy bytes [start, end) of `src` into a new file `name` (if absent), a chunk at a time."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = create_file(dir_fd, tmp, modes)
    copied = 0
    try:
        pos = start
        while pos < end:
            chunk = os.pread(src, min(1 << 20, end - pos), pos)
            if not chunk:
                break
            write_all(fd, chunk)
            pos += len(chunk)
            copied += len(chunk)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.fsync(dir_fd)
        except FileExistsError:
            pass
    finally:
        if fd >= 0:
            os.close(fd)
        _unlink_quietly(dir_fd, tmp)
    return copied


def ensure_domain(path: str, modes: Modes) -> str:
    """The directory's random domain id, fixed by the first process that creates it."""
    fd = open_dir(path)
    try:
        body = {"domain": secrets.token_hex(16), "created": time.time(), "version": 1}
        create_once(fd, DOMAIN, orjson.dumps(body), modes)
        existing = read_json(fd, DOMAIN)
        if not isinstance(existing, dict) or not isinstance(existing.get("domain"), str):
            raise LayoutError(f"{os.path.join(path, DOMAIN)} is damaged: move it away to start a new domain")
        return str(existing["domain"])
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


