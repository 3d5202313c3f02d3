"""A strict tar parser for shards held in memory: only what synthkit's checks need, nothing else.

A shard is read whole (bounded by its manifest's byte count) and hashed before it is parsed, so parsing
works on bytes in memory. Plain ustar/GNU headers with short names, the layout every synthkit shard and
most other writers use, are scanned in one tight loop with all header checksums verified at once in numpy;
anything else (GNU long names, PAX records, ustar prefixes, base-256 sizes) is parsed by
:class:`_TarReader`, which reads the same archives as Python's ``tarfile`` and refuses sparse files and
malformed headers.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib

import numpy as np

from synthkit.errors import ShardError

# Extension -> the only PIL plugin allowed to parse it, so bytes cannot select an exotic decoder.
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
DECODED_EXTENSIONS = (*IMAGE_FORMATS, "json", "cls")
_DECODED = frozenset(DECODED_EXTENSIONS)
_END_BLOCK = b"\0" * tarfile.BLOCKSIZE
_BLOCK = tarfile.BLOCKSIZE
# Long-name and PAX extension members are read whole; no honest name or record set comes near this.
_MAX_EXTENSION_BYTES = 1 << 20
_REGULAR = (b"0", b"\0", b"7")  # "7" (contiguous file) is laid out exactly like a regular file
_LONG_NAME, _LONG_LINK = b"L", b"K"
_PAX = (b"x", b"X")  # per-member extended header (X: the old Solaris spelling)
_PAX_GLOBAL = b"g"
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")
# What a member that is not a regular file is, for its refusal ({!r}: the link's target).
_KINDS = {
    b"2": "a symlink to {!r}",
    b"1": "a hard link to {!r}",
    b"5": "a directory",
    b"S": "a GNU sparse file",
}
_SPECIAL = "a device, fifo or other special file"


class _TarError(Exception):
    """A structural problem in the tar stream; iter_shard_members turns it into a ShardError."""


def _nts(field: bytes) -> str:
    """A NUL-terminated name field as tarfile decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 positive, 0xff negative)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0o377 else value
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise _TarError(f"invalid numeric header field {field!r}")
    return int(text, 8)


def _checksum_ok(buf: bytes) -> bool:
    """tarfile's test: the stored sum is the header's byte sum (checksum field as spaces), unsigned or signed.

    adler32's low half is 1 + the byte sum modulo 65521; each slice here sums to less, so it is exact.
    """
    stored = _number(buf[148:156])
    total = (
        (zlib.adler32(buf[:148]) & 0xFFFF)
        + (zlib.adler32(buf[156:356]) & 0xFFFF)
        + (zlib.adler32(buf[356:]) & 0xFFFF)
        - 3
        + 256  # the eight checksum bytes counted as spaces
    )
    return stored == total or stored in tarfile.calc_chksums(buf)


def _parse_pax(data: bytes, records: dict[str, str]) -> None:
    """Add the ``LENGTH KEY=VALUE\n`` records of a PAX extended header to ``records``."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _TarError("invalid PAX extended header record")
        stop = pos + int(digits)
        record = data[space + 1 : stop]
        if stop > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _TarError("invalid PAX extended header record")
        keyword, _, value = record[:-1].partition(b"=")
        records[keyword.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = stop


def _override(
    records: list[tuple[str, str]], name: str, linkname: str, size: int, typeflag: bytes
) -> tuple[str, str, int, bytes]:
    """A member's (name, linkname, size, typeflag) with extension records applied in order, the last winning:
    GNU long names and links, PAX ``path``/``linkpath``/``size``; any ``GNU.sparse.*`` record marks the
    member sparse (refused later); other records are ignored, as by tarfile."""
    for keyword, value in records:
        if keyword in ("name", "path"):
            name = value
        elif keyword in ("linkname", "linkpath"):
            linkname = value
        elif keyword == "size":
            if not value.isdigit():
                raise _TarError(f"invalid PAX size {value[:40]!r}")
            size = int(value)
        elif keyword.startswith("GNU.sparse."):
            typeflag = b"S"
    return name, linkname, size, typeflag


class _TarReader:
    """A strict streaming reader of ustar/GNU/PAX tar headers: only what synthkit's checks need, nothing else.

    Python's tarfile costs about half of the per-sample time; this reads the same archives (GNU long names,
    ustar prefixes, PAX path/size records, base-256 sizes) and refuses sparse files and malformed headers.
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self.offset = 0  # of the next header
        self.globals: dict[str, str] = {}

    def _read(self, size: int) -> bytes:
        data = self.raw.read(size)
        if len(data) != size:
            raise _TarError("unexpected end of data")
        return data

    def _extension(self, size: int) -> bytes:
        if not 0 <= size <= _MAX_EXTENSION_BYTES:
            raise _TarError(f"extension header of {size} bytes is refused (limit {_MAX_EXTENSION_BYTES})")
        data = self._read(size)
        self._read(-size % _BLOCK)
        self.offset += _BLOCK + size + (-size % _BLOCK)
        return data

    def next(self) -> tuple[str, bytes, str, int] | None:
        """(name, typeflag, linkname, size) of the next member, positioned at its data; None at the end.

        Extension headers (GNU long name or link, PAX records) before the member's own header are read
        first; their values override the header's fields.
        """
        overrides: list[tuple[str, str]] = []  # ("name" | "linkname" | pax keyword, value), outermost first
        buf = self.raw.read(_BLOCK)
        if buf == _END_BLOCK:
            return None
        after_extension = False
        while True:
            self._check_header(buf, after_extension)
            typeflag, size = buf[156:157], _number(buf[124:136])
            if not self._read_extension(typeflag, size, overrides):
                return self._member(buf, typeflag, size, overrides)
            buf, after_extension = self.raw.read(_BLOCK), True

    def _check_header(self, buf: bytes, after_extension: bool) -> None:
        """Refuse a header block that is short, zero after an extension header, or fails its checksum.

        A stream that ends where a header should be is truncated: a complete archive ends with a zero block,
        and that block may not follow an extension header, which belongs to the member after it.
        """
        if after_extension and (buf == _END_BLOCK or len(buf) != _BLOCK):
            raise _TarError("an extension header is not followed by a member header")
        if len(buf) != _BLOCK:
            raise _TarError("empty file" if self.offset == 0 and not buf else "no end-of-archive marker")
        if not _checksum_ok(buf):
            raise _TarError(f"bad header checksum at byte {self.offset}")

    def _read_extension(self, typeflag: bytes, size: int, overrides: list[tuple[str, str]]) -> bool:
        """Read the extension header of this type into ``overrides`` (PAX globals: into ``self.globals``);
        False when the header is a member's own."""
        if typeflag in (_LONG_NAME, _LONG_LINK):
            value = _nts(self._extension(size))
            overrides.append(("name" if typeflag == _LONG_NAME else "linkname", value))
        elif typeflag in _PAX:
            records: dict[str, str] = {}
            _parse_pax(self._extension(size), records)
            overrides.extend(records.items())
        elif typeflag == _PAX_GLOBAL:
            _parse_pax(self._extension(size), self.globals)
        else:
            return False
        return True

    def _member(
        self, buf: bytes, typeflag: bytes, size: int, overrides: list[tuple[str, str]]
    ) -> tuple[str, bytes, str, int]:
        """The member header's fields as tarfile reads them, then the extension overrides applied."""
        name = _nts(buf[:100])
        linkname = _nts(buf[157:257]) if typeflag not in _REGULAR else ""
        if typeflag == b"\0" and name.endswith("/"):  # old V7 tar: a directory is a regular file named "x/"
            typeflag = b"5"
        if typeflag == b"5":
            name = name.rstrip("/")
        if buf[345] and typeflag != b"S":  # ustar prefix, as tarfile joins it
            name = _nts(buf[345:500]) + "/" + name
        # Innermost first, as tarfile does: global PAX records, then the extensions nearest the header.
        name, linkname, size, typeflag = _override(
            [*self.globals.items(), *reversed(overrides)], name, linkname, size, typeflag
        )
        if typeflag == b"5":
            name = name.rstrip("/")
        if size < 0:
            raise _TarError(f"negative member size {size}")
        self.offset += _BLOCK
        return name, typeflag, linkname, size

    def data(self, size: int) -> bytes:
        """The data of the member just returned by next(), and skip its padding."""
        data = self._read(size)
        if pad := -size % _BLOCK:
            self._read(pad)
        self.offset += size + pad
        return data


def _split_member(
    shard: str, name: str, typeflag: bytes, linkname: str, size: int, max_member_bytes: int
) -> tuple[str, str]:
    """Check one member header and return (key, extension); key is the name up to the first dot.

    The checks run in a fixed order, so that a member wrong in several ways is named by the worst:
    where its name points, then what kind of file it is, then its name's form, then its size.
    """
    where = f"{shard}: member {name!r}"
    problem = _path_problem(name) or _kind_problem(typeflag, linkname)
    if problem is not None:
        raise ShardError(f"{where}: {problem}")
    key, dot, ext = name.partition(".")
    if not key or not dot:
        raise ShardError(f"{where}: member names must be KEY.EXT with a non-empty key")
    if ext not in _DECODED:
        raise ShardError(
            f"{where}: extension {ext!r} is not decoded by synthkit (only {', '.join(DECODED_EXTENSIONS)}); "
            "pickled or other executable content is refused"
        )
    if size > max_member_bytes:
        raise ShardError(f"{where}: {size} bytes is above the limit of {max_member_bytes}")
    return key, ext


_SEPARATOR = re.compile(r"[/\\]")
_DRIVE = re.compile(r"[A-Za-z]:")


def _path_problem(name: str) -> str | None:
    """Why a member name is a path rather than a flat name (None: flat): absolute (a leading separator or a
    Windows drive letter), climbing out with ``..``, or into a directory."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute member names are refused"
    if ".." in _SEPARATOR.split(name):
        return "member names with '..' are refused"
    if "/" in name or "\\" in name:
        return "synthkit shards hold flat KEY.EXT members, not directories"
    return None


def _kind_problem(typeflag: bytes, linkname: str) -> str | None:
    """Why a member is not a regular file (None: it is), naming a link's target."""
    if typeflag in _REGULAR:
        return None
    return f"is {_KINDS.get(typeflag, _SPECIAL).format(linkname)}; only regular files are allowed"


# One member of a shard: (name, typeflag, linkname, size, offset of its data in the shard's bytes).
Member = tuple[str, bytes, str, int, int]
# A flat ``KEY.EXT`` name of a decoded extension: the common case, checked by one regex instead of the
# rules of _split_member (which names what is wrong with any other name).
_PLAIN_NAME = re.compile(r"(?!.:)([^/\\.\0]+)\.(png|json|cls|jpg|jpeg|webp)")
_OCTAL = np.frombuffer(b"01234567", dtype=np.uint8)
_REGULAR_FLAGS = np.frombuffer(b"0\x007", dtype=np.uint8)
_POW8 = 8 ** np.arange(5, -1, -1, dtype=np.int64)


def _headers(data: bytes) -> tuple[list[int], list[int]] | None:
    """Offsets and sizes of the members of a plain ustar/GNU archive, or None when any header needs the
    full parser.

    The loop only follows the sizes from header to header; every header field it relies on is then checked
    for all headers at once in numpy: checksum (as tarfile computes it, unsigned), regular-file type, an
    11-digit octal size ended by NUL, no ustar prefix, a name field ended by NUL. Anything unusual returns
    None, never a guess, and the full parser takes the shard.
    """
    n = len(data)
    if n % _BLOCK:
        return None
    offsets: list[int] = []
    sizes: list[int] = []
    pos = 0
    try:
        while True:
            if pos + _BLOCK > n:
                return None  # no end-of-archive block: the full parser names the truncation
            if data[pos] == 0 and data[pos : pos + _BLOCK] == _END_BLOCK:
                break
            size = int(data[pos + 124 : pos + 135], 8)  # digits are checked below, for every header at once
            offsets.append(pos)
            sizes.append(size)
            pos += _BLOCK + size + (-size % _BLOCK)
    except ValueError:
        return None
    if pos > n or not _headers_ok(data, offsets):
        return None
    return offsets, sizes


def _fast_members(data: bytes) -> list[Member] | None:
    found = _headers(data)
    if found is None:
        return None
    members: list[Member] = []
    for pos, size in zip(*found, strict=True):
        name = data[pos : pos + 100].partition(b"\0")[0].decode("utf-8", "surrogateescape")
        members.append((name, data[pos + 156 : pos + 157], "", size, pos + _BLOCK))
    return members


# (?!.:): a name like "C:x.png" reads as a drive letter on Windows; _split_member refuses it.
_PLAIN_NAME_BYTES = re.compile(rb"(?!.:)([^/\\.\0]+)\.(png|json|cls|jpg|jpeg|webp)\0")


def plain_groups(data: bytes, max_member_bytes: int) -> list[tuple[str, dict[str, bytes]]] | None:
    """The samples of a plain archive as ``[(key, {ext: bytes})]`` in one pass, or None for anything else.

    The common case, every member a regular ``KEY.EXT`` file of a decoded extension, each key's members
    adjacent and each extension once per key, within the size limit, costs one regex match and one size
    parse per member (:func:`_plain_walk`); the other header fields of all members are then checked at once
    (:func:`_headers_ok`). Whatever does not fit returns None: the general path (read_members, then the
    rules of split_member and of the reader's grouping) then parses the shard again and names exactly what
    is wrong.
    """
    if len(data) % _BLOCK:
        return None
    try:
        walked = _plain_walk(data, max_member_bytes)
    except ValueError:  # a size field that is not octal digits
        return None
    if walked is None:
        return None
    groups, offsets = walked
    return groups if _headers_ok(data, offsets) else None


def _plain_walk(
    data: bytes, max_member_bytes: int
) -> tuple[list[tuple[str, dict[str, bytes]]], list[int]] | None:
    """Follow the members of a plain archive from header to header up to its end-of-archive block:
    (samples, header offsets), or None at the first member that is not plain.

    One loop with the grouping inline: this runs once per member on the training stream's path.
    """
    n = len(data)
    groups: list[tuple[str, dict[str, bytes]]] = []
    offsets: list[int] = []
    seen: set[bytes] = set()
    current: bytes | None = None
    parts: dict[str, bytes] = {}
    match = _PLAIN_NAME_BYTES.match
    pos = 0
    while pos + _BLOCK <= n:
        m = match(data, pos, pos + 100)
        if m is None:  # the end-of-archive block, or a member the general path must name
            return (groups, offsets) if data[pos : pos + _BLOCK] == _END_BLOCK else None
        size = int(data[pos + 124 : pos + 135], 8)  # digits are checked by _headers_ok, for all at once
        if size > max_member_bytes:
            return None
        key, ext = m.group(1, 2)
        if key != current:  # a new sample: its key must not have been seen before
            if key in seen:
                return None
            seen.add(key)
            parts = {}
            groups.append((key.decode("utf-8", "surrogateescape"), parts))
            current = key
        ext_name = _EXT_NAMES[ext]
        if ext_name in parts:
            return None
        start = pos + _BLOCK
        parts[ext_name] = data[start : start + size]
        offsets.append(pos)
        pos = start + size + (-size % _BLOCK)
    return None  # no end-of-archive block: the full parser names the truncation


_EXT_NAMES = {ext.encode(): ext for ext in DECODED_EXTENSIONS}


def _headers_ok(data: bytes, offsets: list[int]) -> bool:
    """Every header at ``offsets``: checksum, type, octal size, no prefix, NUL-ended name (see _headers)."""
    if not offsets:
        return True
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, _BLOCK)[np.asarray(offsets) // _BLOCK]
    chk = blocks[:, 148:154]
    ok = (
        np.isin(blocks[:, 124:135], _OCTAL).all()
        and not blocks[:, 135].any()
        and np.isin(blocks[:, 156], _REGULAR_FLAGS).all()
        and not blocks[:, 345].any()
        and not blocks[:, 99].any()
        and np.isin(chk, _OCTAL).all()
        and not blocks[:, 154].any()
    )
    if not ok:
        return False
    sums = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    return bool(np.array_equal(sums, (chk.astype(np.int64) - 48) @ _POW8))


def _slow_members(data: bytes) -> list[Member]:
    """Every member through :class:`_TarReader`; raises _TarError at the first structural problem, with the
    members before it in ``error.members``."""
    reader = _TarReader(io.BytesIO(data))  # type: ignore[arg-type]
    members: list[Member] = []
    try:
        while (member := reader.next()) is not None:
            name, typeflag, linkname, size = member
            start = reader.offset
            members.append((name, typeflag, linkname, size, start))
            if typeflag not in _NO_DATA and start + size > len(data):
                raise _TarError("unexpected end of data")
            if typeflag == b"S":
                break  # a sparse file's data layout is not read; split_member refuses the member
            # As tarfile: links, devices, FIFOs and directories have no data, whatever their size field.
            reader.data(0 if typeflag in _NO_DATA else size)
    except _TarError as exc:
        exc.members = members  # type: ignore[attr-defined]
        raise
    return members


def read_members(data: bytes) -> tuple[list[Member], str | None]:
    """All members of a tar held in ``data`` and the structural problem that ended it early (None: none).

    Members before a problem are complete (their data lies inside ``data``); the caller decides whether a
    shard with a broken tail may give them out.
    """
    fast = _fast_members(data)
    if fast is not None:
        return fast, None
    try:
        return _slow_members(data), None
    except _TarError as exc:
        return exc.members, str(exc)  # type: ignore[attr-defined]


def split_member(shard: str, member: Member, max_member_bytes: int) -> tuple[str, str]:
    """(key, extension) of a member, or ShardError naming why the member is refused."""
    name, typeflag, linkname, size, _ = member
    if typeflag in _REGULAR and size <= max_member_bytes and (m := _PLAIN_NAME.fullmatch(name)):
        return m.group(1), m.group(2)
    return _split_member(shard, name, typeflag, linkname, size, max_member_bytes)
