"""Which dataset names a snapshot may hold: the one rule the snapshot writer and restore share.

A dataset is restored to `<target>/<name>.jsonl` (or `.csv`), its `/`-separated segments
becoming directories. A name restore could not write, or two names that would land on one path,
must be refused when the snapshot is taken: stored, they make a snapshot that never restores.

The rule. A name is a string of at most MAX_NAME_BYTES bytes of UTF-8 (no lone surrogates)
split on "/" into segments, where every segment

* is not empty, "." or "..", and is at most MAX_SEGMENT_BYTES bytes of UTF-8 (so that with
  ".jsonl" it fits a file name's 255 bytes);
* holds no control character (Unicode category Cc: NUL, C0, DEL, C1) and no backslash.

Within one snapshot, names are compared folded (NFC, then case-folded, then NFC again: what a
case-insensitive or normalising file system such as APFS or NTFS treats as one name), and

* no two names fold alike (`Orders` and `orders`);
* no name is a directory of another (`a` and `a/b`);
* no name with ".jsonl" or ".csv" appended is a directory of another (`a` and `a.jsonl/b`:
  the file `a.jsonl` and the directory `a.jsonl`).
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 1024
MAX_SEGMENT_BYTES = 240
#: what restore appends to a dataset's last segment
RESTORE_SUFFIXES = (".jsonl", ".csv")


class DatasetNameError(ValueError):
    """A dataset name restore could not write (alone, or beside another name)."""


def shown(name: object) -> str:
    """A name for an error line: quoted, control characters escaped, shortened."""
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a dataset's name on its own, or None if it can."""
    if not isinstance(name, str) or not name:
        return "a dataset name must be non-empty text"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid Unicode text"
    if size > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            return "the name has an empty, '.' or '..' path segment"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"a path segment of the name is longer than {MAX_SEGMENT_BYTES} bytes"
        if "\\" in segment:
            return "the name holds a backslash"
        if any(unicodedata.category(c) == "Cc" for c in segment):
            return "the name holds a control character"
    return None


def check_name(name: object) -> str:
    """`name` if it can be a dataset's name; DatasetNameError otherwise."""
    problem = name_problem(name)
    if problem is not None:
        raise DatasetNameError(problem)
    return name  # type: ignore[return-value]


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


class DatasetNames:
    """The dataset names of one snapshot so far; `add` refuses one that restore could not
    write beside them."""

    def __init__(self) -> None:
        #: folded name -> name
        self._names: dict[str, str] = {}
        #: folded directory (a proper prefix of a name, by segments) -> a name under it
        self._dirs: dict[str, str] = {}

    def add(self, name: object) -> None:
        """Take `name`, or raise DatasetNameError saying why it cannot be one of them."""
        check_name(name)
        assert isinstance(name, str)
        folded = _fold(name)
        other = self._names.get(folded)
        if other is not None:
            raise DatasetNameError(f"it would be restored to the same file as dataset "
                                   f"{shown(other)}")
        for candidate in (folded, *(folded + s for s in RESTORE_SUFFIXES)):
            other = self._dirs.get(candidate)
            if other is not None:
                raise DatasetNameError(f"dataset {shown(other)} would be restored inside a "
                                       "directory of that name")
        segments = folded.split("/")
        prefixes = ["/".join(segments[:i]) for i in range(1, len(segments))]
        for prefix in prefixes:
            other = self._names.get(prefix) or next(
                (self._names[prefix[:-len(s)]] for s in RESTORE_SUFFIXES
                 if prefix.endswith(s) and prefix[:-len(s)] in self._names), None)
            if other is not None:
                raise DatasetNameError(f"it would be restored inside a directory named after "
                                       f"dataset {shown(other)}")
        self._names[folded] = name
        for prefix in prefixes:
            self._dirs.setdefault(prefix, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _fold(name) in self._names


def check_names(names: list[str]) -> None:
    """Every name valid and none colliding with another; DatasetNameError naming the first
    that is not."""
    taken = DatasetNames()
    for name in names:
        try:
            taken.add(name)
        except DatasetNameError as exc:
            raise DatasetNameError(f"dataset {shown(name)}: {exc}") from None
