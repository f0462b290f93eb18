"""Bounds on an .xlsx file's zip archive, checked before openpyxl parses any of it.

Why: an .xlsx is a zip of XML members, and a small file can inflate to gigabytes. openpyxl's
read-only mode streams worksheets, but loads the shared-strings table (and styles, the workbook
part, relationships) whole: a 1 MiB file holding one huge shared string took 3.2 GB. Every
`.xlsx` that lands in a files source's folder is opened (to see whether it is a Seller Center
export), so each is checked first, from the zip's own directory:

* the central directory is at most MAX_DIRECTORY_BYTES (read before the members are listed, so a
  forged archive of a million members is refused without building a million entries);
* at most MAX_MEMBERS members, at most MAX_TOTAL_BYTES uncompressed in all;
* a worksheet at most MAX_SHEET_BYTES (read as a stream; rows and cells are bounded later);
  the shared strings at most MAX_SHARED_STRINGS_BYTES (held in memory as Python strings, about
  four times their XML size at worst); any other member at most MAX_PART_BYTES;
* no member above RATIO_FLOOR bytes inflating more than MAX_RATIO times (real exports compress
  10 to 30 times; deflate cannot exceed about 1030).

The sizes checked are the ones the archive declares; Python's zipfile stops every member's output
at its declared size (and then fails its CRC check), so a member cannot inflate past them.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sellerbak.errors import SourceError

MAX_DIRECTORY_BYTES = 1 << 20
MAX_MEMBERS = 1000
MAX_TOTAL_BYTES = 2 << 30
MAX_SHEET_BYTES = 1 << 30
MAX_SHARED_STRINGS_BYTES = 64 << 20
MAX_PART_BYTES = 16 << 20
MAX_RATIO = 200
RATIO_FLOOR = 1 << 20

SHARED_STRINGS = "xl/sharedstrings.xml"
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_MAX_COMMENT = 0xFFFF
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n < 1 << 30 else f"{n >> 30} GiB"


def check_workbook(fh: BinaryIO, label: str) -> None:
    """Raise SourceError (naming `label`, the file) unless the open .xlsx file `fh` is within
    the bounds above; `fh` is left at an undefined position."""
    def refuse(why: str) -> SourceError:
        return SourceError(f"{label}: refused as an Excel (.xlsx) file: {why}; a Seller Center "
                           "export is never like this")

    _check_directory(fh, refuse)
    try:
        fh.seek(0)
        with zipfile.ZipFile(fh) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise SourceError(f"{label}: not a readable Excel (.xlsx) file") from None
    if len(members) > MAX_MEMBERS:
        raise refuse(f"it holds more than {MAX_MEMBERS} parts")
    if sum(m.file_size for m in members) > MAX_TOTAL_BYTES:
        raise refuse(f"it inflates to more than {_mib(MAX_TOTAL_BYTES)}")
    for member in members:
        name = member.filename.lower()
        if name == SHARED_STRINGS:
            limit, what = MAX_SHARED_STRINGS_BYTES, "its shared strings"
        elif name.startswith("xl/worksheets/"):
            limit, what = MAX_SHEET_BYTES, "a worksheet"
        else:
            limit, what = MAX_PART_BYTES, "a part"
        if member.file_size > limit:
            raise refuse(f"{what} inflate{'' if what.endswith('s') else 's'} to more than "
                         f"{_mib(limit)}")
        if member.file_size > RATIO_FLOOR and \
                member.file_size > MAX_RATIO * max(member.compress_size, 1):
            raise refuse(f"a part is compressed more than {MAX_RATIO} times (a zip bomb)")


def _check_directory(fh: BinaryIO, refuse: Callable[[str], SourceError]) -> None:
    """The size of the central directory and its member count, from the end-of-directory
    record, before zipfile reads the directory. A ZIP64 archive (needed only past 65535 members
    or 4 GiB; zipfile uses its locator's figures whenever one precedes the record) is refused
    outright."""
    fh.seek(0, 2)
    size = fh.tell()
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    # found as zipfile finds it: at the very end (no comment), else the last signature
    at = len(tail) - _EOCD.size
    if at < 0 or tail[at:at + 4] != _EOCD_SIGNATURE or tail[-2:] != b"\0\0":
        at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or at + _EOCD.size > len(tail):
        return  # not a zip: zipfile says so, in its own words
    _sig, _disk, _cd_disk, _here, entries, cd_size, cd_offset, _comment = \
        _EOCD.unpack_from(tail, at)
    zip64 = at >= _ZIP64_LOCATOR_SIZE and \
        tail[at - _ZIP64_LOCATOR_SIZE:at - _ZIP64_LOCATOR_SIZE + 4] == _ZIP64_LOCATOR
    if zip64 or entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise refuse("it is a ZIP64 archive (more than 65535 parts or 4 GiB)")
    if entries > MAX_MEMBERS:
        raise refuse(f"it holds more than {MAX_MEMBERS} parts")
    if cd_size > MAX_DIRECTORY_BYTES:
        raise refuse(f"its directory is larger than {_mib(MAX_DIRECTORY_BYTES)}")


def open_checked(file: Path) -> BinaryIO:
    """`file` opened for reading and checked (see check_workbook); the caller closes it."""
    try:
        fh = open(file, "rb")  # noqa: SIM115 - handed to the caller
    except OSError as exc:
        raise SourceError(f"cannot read {file}: {exc.strerror}") from None
    try:
        check_workbook(fh, file.name)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise SourceError(f"cannot read {file}: {exc.strerror}") from None
    except BaseException:
        fh.close()
        raise
    return fh
