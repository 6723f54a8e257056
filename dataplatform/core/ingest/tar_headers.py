"""Reading the member list of a tar shard with bounded work, without ``tarfile``.

Shards come from outside, and the standard library's ``tarfile`` trusts them: on the Python
this project runs (3.11), a member whose size field is negative sends ``next()`` back to the same
header forever while memory grows (CVE-2025-8194), a PAX header of digits takes quadratic time
(CVE-2024-6232), and a PAX or GNU long-name header is read whole into memory whatever size it
claims. Ingest needs far less than ``tarfile`` offers: each member's name, type, size and where
its body starts. This reader gets exactly that:

- every step advances at least one 512-byte block, so the loop ends at the end of the file;
- sizes must be non-negative and every header's checksum must match;
- extended headers (PAX ``x``, GNU ``L`` long names) are read only up to ``MAX_EXTENDED_BYTES``
  and parsed in one linear pass; global PAX headers and long link names are skipped;
- GNU and PAX sparse members are reported as such (their stored bytes are not the file).

A header that cannot be read ends the listing with ``TarListing.broken`` saying where and why;
the members before it stay usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK = 512
MAX_EXTENDED_BYTES = 1 << 16  # a path or a few PAX records; real ones are under 1 KiB
# Types whose body is file data. "7" (contiguous) is a regular file to every reader.
_FILE_TYPES = {b"0", b"\0", b"7"}
_LINK_TYPES = {b"1": "hard link", b"2": "symlink"}
_SPECIAL_TYPES = {b"3": "character device", b"4": "block device", b"6": "FIFO"}


@dataclass(frozen=True)
class TarMember:
    """One member: its name (``None`` if not UTF-8), kind, body size and body offset."""

    name: str | None
    raw_name: bytes
    kind: str  # "file" | "folder" | "sparse" | a link or special type in words
    size: int
    offset_data: int

    @property
    def shown_name(self) -> str:
        """The name for people and the ledger, undecodable bytes replaced."""
        return self.name if self.name is not None else self.raw_name.decode("utf-8", "replace")


@dataclass
class TarListing:
    members: list[TarMember] = field(default_factory=list)
    broken: str | None = None  # why the listing stopped early, with the byte offset
    broken_at: int = 0
    end: int = 0  # offset after the last member read


class TarHeaderError(ValueError):
    pass


def list_members(fh: BinaryIO, size: int) -> TarListing:
    """Every member header of the tar file ``fh`` (of ``size`` bytes), in order."""
    listing = TarListing()
    offset = 0
    pending: dict[str, str] = {}
    long_name: bytes | None = None
    while offset + BLOCK <= size:
        fh.seek(offset)
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            break
        if block == b"\0" * BLOCK:
            listing.end = offset
            return listing
        try:
            header = _parse_header(block)
        except TarHeaderError as exc:
            listing.broken, listing.broken_at = f"header at byte {offset}: {exc}", offset
            listing.end = offset
            return listing
        body = offset + BLOCK
        next_offset = body + _padded(header.size)
        if header.type in (b"x", b"g", b"L", b"K"):
            if header.size > MAX_EXTENDED_BYTES:
                listing.broken = (
                    f"extended header at byte {offset} claims {header.size} bytes, "
                    f"over {MAX_EXTENDED_BYTES}"
                )
                listing.broken_at, listing.end = offset, offset
                return listing
            if body + header.size > size:
                listing.broken = f"extended header at byte {offset} runs past the end"
                listing.broken_at, listing.end = offset, offset
                return listing
            fh.seek(body)
            data = fh.read(header.size)
            if header.type == b"x":
                try:
                    pending.update(parse_pax(data))
                except TarHeaderError as exc:
                    listing.broken = f"PAX header at byte {offset}: {exc}"
                    listing.broken_at, listing.end = offset, offset
                    return listing
            elif header.type == b"L":
                long_name = data.split(b"\0", 1)[0]
            offset = next_offset
            continue
        raw_name = header.name
        if long_name is not None:
            raw_name = long_name
        if "path" in pending:
            raw_name = pending["path"].encode("utf-8", "surrogateescape")
        member_size = header.size
        if "size" in pending:
            try:
                member_size = int(pending["size"])
            except ValueError:
                member_size = -1
            if member_size < 0:
                listing.broken = f"PAX size of the member at byte {offset} is not a size"
                listing.broken_at, listing.end = offset, offset
                return listing
            next_offset = body + _padded(member_size)
        sparse = header.type == b"S" or any(k.startswith("GNU.sparse.") for k in pending)
        listing.members.append(
            TarMember(
                name=_decoded(raw_name),
                raw_name=raw_name,
                kind="sparse" if sparse else _kind(header.type),
                size=member_size,
                offset_data=body,
            )
        )
        pending, long_name = {}, None
        offset = next_offset
        listing.end = offset
    listing.end = min(offset, size)
    if offset < size:
        listing.broken = f"the shard ends inside the header at byte {offset}"
        listing.broken_at = offset
    return listing


@dataclass(frozen=True)
class _Header:
    name: bytes
    size: int
    type: bytes


def _parse_header(block: bytes) -> _Header:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    if stored not in (unsigned, signed):
        raise TarHeaderError("bad checksum (not a tar header)")
    size = _number(block[124:136], "size")
    if size < 0:
        raise TarHeaderError(f"negative size {size}")
    name = block[0:100].split(b"\0", 1)[0]
    # POSIX ustar keeps a name prefix at 345; GNU's "ustar  " header has other fields there.
    if block[257:263] == b"ustar\0":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _Header(name=name, size=size, type=block[156:157])


def _number(field_bytes: bytes, what: str) -> int:
    """An octal field, or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
    if field_bytes[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field_bytes[1:], "big")
        if field_bytes[0] == 0xFF:
            value -= 256 ** (len(field_bytes) - 1)
        return value
    text = field_bytes.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarHeaderError(f"{what} field {field_bytes!r} is not a number") from None


def parse_pax(data: bytes) -> dict[str, str]:
    """PAX records ``"<len> <key>=<value>\\n"`` in one pass; each length is checked."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            raise TarHeaderError(f"record at {pos} has no length")
        digits = data[pos:space]
        if not digits.isdigit():
            raise TarHeaderError(f"record at {pos} has length {digits[:20]!r}")
        length = int(digits)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarHeaderError(f"record at {pos} has a wrong length {length}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise TarHeaderError(f"record at {pos} has no '='")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _decoded(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _kind(type_flag: bytes) -> str:
    if type_flag in _FILE_TYPES:
        return "file"
    if type_flag == b"5":
        return "folder"
    if type_flag in _LINK_TYPES:
        return _LINK_TYPES[type_flag]
    return _SPECIAL_TYPES.get(type_flag, f"member of type {type_flag!r}")
