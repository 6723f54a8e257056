"""Bounded work on hostile input: the guarded code path beside the unguarded one it replaced.

Each case is one input built to cost as much as possible:

- a 50 MB caption: ``normalize_text`` (capped before the per-character work) against the same
  normalisation over the whole caption, which is what ingest did before the cap;
- a tar shard with a negative member size (CVE-2025-8194) and one with an 80 KB PAX header of
  digits (CVE-2024-6232): ``tar_headers.list_members`` against the standard library's
  ``tarfile``, which ingest used before; run in a child process with a time limit, because on
  Python 3.11 the first one never ends.

Run: ``.venv/bin/python bench/hostile_input.py`` (about a minute; baselines that do not finish
are reported as such).
"""

from __future__ import annotations

import io
import multiprocessing
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dataplatform.core.ingest.tar_headers import list_members
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS, normalize_text

LIMIT_S = 20.0


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _in_child(target, *args) -> float | None:
    """Seconds ``target(*args)`` took in a child process, or ``None`` past ``LIMIT_S``."""
    ctx = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    proc = ctx.Process(target=target, args=args)
    proc.start()
    proc.join(LIMIT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return time.perf_counter() - start


def _tarfile_list(path: str) -> None:
    try:
        with tarfile.open(path) as tar:
            tar.getmembers()
    except tarfile.TarError:
        pass


def _ours_list(path: str) -> None:
    with open(path, "rb") as fh:
        list_members(fh, Path(path).stat().st_size)


def _header(name: str, size: int = 0, size_field: bytes | None = None, typ: bytes = b"0") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    if size_field is not None:
        buf[124:136] = size_field
    buf[156:157] = typ
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf)


def _shards(folder: Path) -> dict[str, Path]:
    body = b"x" * 1000
    good = _header("000001.jpg", size=len(body)) + body + b"\0" * (-len(body) % 512)
    negative = folder / "negative_size.tar"
    negative.write_bytes(
        good
        + _header("000002.jpg", size_field=b"\xff" + (256**11 - 512).to_bytes(11, "big"))
        + b"\0" * 1024
    )
    digits = b"1" * 80_000
    pax = folder / "pax_digits.tar"
    pax.write_bytes(
        good
        + _header("pax", size=len(digits), typ=b"x")
        + digits
        + b"\0" * (-len(digits) % 512)
        + b"\0" * 1024
    )
    return {"tar, negative member size": negative, "tar, 80 KB PAX header of digits": pax}


def _row(case: str, guarded: float | None, baseline: float | None) -> str:
    def fmt(v: float | None) -> str:
        return f"{v:9.3f} s" if v is not None else f"  > {LIMIT_S:.0f} s (stopped)"

    ratio = (
        f"{baseline / guarded:8.0f}x"
        if guarded and baseline
        else ("  unbounded" if baseline is None else "")
    )
    return f"{case:<34}{fmt(guarded):>20}{fmt(baseline):>22}{ratio:>12}"


def main() -> None:
    print(f"python {sys.version.split()[0]}; baseline = the code path ingest used before")
    print(f"{'case':<34}{'guarded':>20}{'baseline':>22}{'speed-up':>12}")
    caption = "a cup " + "é" * (50 * 1024 * 1024)
    guarded = _timed(lambda: normalize_text(caption, DEFAULT_MAX_TEXT_CHARS))
    baseline = _timed(lambda: normalize_text(caption, len(caption))[0][:DEFAULT_MAX_TEXT_CHARS])
    print(_row("caption of 50 MB", guarded, baseline))
    with tempfile.TemporaryDirectory() as tmp:
        for case, path in _shards(Path(tmp)).items():
            ours = _in_child(_ours_list, str(path))
            theirs = _in_child(_tarfile_list, str(path))
            print(_row(case, ours, theirs))
    # One process start is part of each tar figure (both sides alike).
    print(f"tar figures include one process start each (~{_in_child(_noop):.2f} s)")


def _noop() -> None:
    io.BytesIO()


if __name__ == "__main__":
    main()
