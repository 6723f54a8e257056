"""Opening files a landing folder names without ever reading outside it.

Everything under ``landing/<date>/`` comes from people the platform does not control: a
manifest, a sidecar caption or a shard may be a symlink to ``/etc/passwd`` or
``/proc/self/environ``, a FIFO that blocks the reader forever, or a device that never ends.
So every file the landing reads goes through ``open_confined``:

- the path is resolved (symlinks included) and must stay inside the root;
- the target is ``stat``-ed before it is opened, and anything but a regular file is refused
  (so a FIFO is never opened, and a device never read);
- the open itself uses ``O_NOFOLLOW | O_NONBLOCK`` on the resolved path and checks that it got
  the inode that was checked, so a file swapped for a symlink or a FIFO in between is refused
  too.

Refusals raise ``FileRefused`` with a ledger reason; callers turn it into a ledger row.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from dataplatform.core.ingest.rejection import Rejection

# Linux's NAME_MAX and PATH_MAX: longer names fail in the kernel with ENAMETOOLONG anyway,
# but checking first gives a reason instead of an errno.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


class FileRefused(Rejection, OSError):
    """A file the landing will not read; an ``OSError`` too, as callers of file I/O expect."""


class MissingFile(FileRefused, FileNotFoundError):
    """``missing_file``: still a ``FileNotFoundError`` for callers that only know that."""


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words a ledger reader understands."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special file"


def check_path_text(text: str) -> None:
    """Refuse a path string that no file system call should even see (NUL, over-long)."""
    if "\x00" in text:
        raise FileRefused("invalid_path", f"the path contains a NUL byte: {text!r}")
    if any("\ud800" <= ch <= "\udfff" for ch in text if not ch.isascii()):
        shown = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        raise FileRefused("invalid_path", f"the path is not valid UTF-8: {shown!r}")
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        raise FileRefused(
            "invalid_path", f"the path is {len(encoded)} bytes, over {MAX_PATH_BYTES}"
        )
    for part in encoded.split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            raise FileRefused(
                "invalid_path",
                f"a name in the path is {len(part)} bytes, over {MAX_NAME_BYTES}: "
                f"{part[:40].decode('utf-8', 'replace')}...",
            )


def confined_path(root: Path, path: Path | str) -> Path:
    """``path`` with every symlink resolved, refused unless it stays inside ``root``.

    ``root`` must already be resolved. The reason is ``path_outside_landing`` either way (the
    ledger's one reason for an escape); the detail says whether a symlink led outside.
    """
    text = os.fspath(path)
    check_path_text(text)
    try:
        real = Path(os.path.realpath(text))
    except (OSError, ValueError) as exc:
        raise FileRefused("invalid_path", f"{text!r} cannot be resolved: {exc}") from exc
    if real == root or root in real.parents:
        return real
    lexical = Path(os.path.normpath(os.path.join(root, text)))
    if lexical == root or root in lexical.parents:
        raise FileRefused(
            "path_outside_landing",
            f"{_shown(root, text)} is a symlink (or lies under one) that resolves to {real}, "
            f"outside {root}",
        )
    raise FileRefused("path_outside_landing", f"{text!r} resolves to {real}, outside {root}")


def regular_file(root: Path, path: Path | str) -> Path:
    """The resolved path of a regular file inside ``root``; never opens anything.

    Raises ``FileRefused`` (``missing_file``, ``not_a_regular_file``, ``read_error``,
    ``invalid_path`` or ``path_outside_landing``).
    """
    real = confined_path(root, path)
    try:
        st = os.stat(real)
    except FileNotFoundError as exc:
        raise MissingFile(
            "missing_file", f"{_shown(root, path)} does not exist in the landing folder"
        ) from exc
    except OSError as exc:
        raise FileRefused("read_error", f"{_shown(root, path)}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(
            "not_a_regular_file",
            f"{_shown(root, path)} is a {file_kind(st.st_mode)}; only regular files are read",
        )
    return real


def open_confined(root: Path, path: Path | str) -> BinaryIO:
    """Open a regular file inside ``root`` for reading, or raise ``FileRefused``.

    The checked inode is the one opened: ``O_NOFOLLOW`` refuses a symlink swapped in after the
    check, ``O_NONBLOCK`` keeps a FIFO swapped in from blocking the open, and ``fstat`` must
    match what ``stat`` saw.
    """
    real = regular_file(root, path)
    before = os.stat(real)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(
                "path_outside_landing", f"{_shown(root, path)} became a symlink while read"
            ) from exc
        raise FileRefused("read_error", f"{_shown(root, path)}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(st.st_mode):
            raise FileRefused(
                "not_a_regular_file",
                f"{_shown(root, path)} changed while it was opened (now a {file_kind(st.st_mode)})",
            )
        flags_now = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags_now & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_confined(
    root: Path, path: Path | str, limit: int | None = None, cut: bool = False
) -> bytes:
    """The bytes of a regular file inside ``root``, at most ``limit`` of them.

    Over ``limit``, the first ``limit`` bytes are returned when ``cut`` (a caption that a later
    cap shortens anyway), else ``file_too_large`` is raised. Never reads more than ``limit + 1``.
    """
    with open_confined(root, path) as fh:
        if limit is None:
            return fh.read()
        data = fh.read(limit + 1)
    if len(data) > limit:
        if cut:
            return data[:limit]
        raise FileRefused("file_too_large", f"{_shown(root, path)} is over {limit} bytes")
    return data


def _shown(root: Path, path: Path | str) -> str:
    """The path as the landing folder knows it (relative when it is under ``root``)."""
    text = os.fspath(path)
    try:
        return Path(text).relative_to(root).as_posix()
    except ValueError:
        return text
