"""`type: files`: datasets from export files on disk.

Every `*.jsonl` and `*.csv` file under `path` is one dataset named by its path relative to
`path` without the extension (`finance/statements.csv` -> `finance/statements`). JSONL lines are
JSON objects; CSV rows become objects of strings keyed by the header, and the header's column
order is kept in the manifest so `restore --format csv` gives the columns back in that order.
Every record needs an `id`. Files are streamed, never read whole.

Seller Center's own exports (the orders CSV/XLSX and the finance "Order details" XLSX) are
recognised by their columns and mapped to the `orders` and `finance/transactions` datasets,
keyed by the platform's ids (see sellercenter.py).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

from sellerbak.backup.exporters import sellercenter
from sellerbak.backup.exporters.base import DatasetExport, Record
from sellerbak.errors import SourceError
from sellerbak.records import Line, encode_text
from sellerbak.repository.dataset_names import DatasetNameError, DatasetNames, shown

SUFFIXES = (".jsonl", ".csv")
MAX_LINE = 64 * 1024 * 1024
BLOCK = 1 << 20
SELLER_CENTER_SUFFIXES = (".csv", ".xlsx")


class FilesSource:
    type = "files"

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = Path(path)

    def datasets(self) -> dict[str, Path]:
        if not self.path.is_dir():
            raise SourceError(f"source {self.name}: {self.path} is not a directory")
        found: dict[str, Path] = {}
        taken = DatasetNames()
        self.seller_center: dict[str, list[Path]] = {}
        for file in sorted(self.path.rglob("*")):
            if file.suffix.lower() in SELLER_CENTER_SUFFIXES and file.is_file():
                kind = sellercenter.detect(file)
                if kind is not None:
                    self.seller_center.setdefault(kind, []).append(file)
                    continue
            if file.suffix.lower() not in SUFFIXES or not file.is_file():
                continue
            rel = file.relative_to(self.path).with_suffix("")
            name = "/".join(rel.parts)
            if name in found:
                raise SourceError(f"source {self.name}: {found[name].name} and {file.name} "
                                  f"would both be dataset {name}")
            self._take(taken, name, file)
            found[name] = file
        for name, files in self.seller_center.items():
            if name in found:
                raise SourceError(f"source {self.name}: {found[name].name} and the Seller "
                                  f"Center export {files[0].name} would both be dataset {name}")
            self._take(taken, name, files[0])
        return found

    def _take(self, taken: DatasetNames, name: str, file: Path) -> None:
        """Refuse, naming the file, a dataset name restore could not write (see
        repository/dataset_names.py): stored, it would make a snapshot that never restores."""
        try:
            taken.add(name)
        except DatasetNameError as exc:
            where = shown(str(file.relative_to(self.path)))
            raise SourceError(f"source {self.name}: {where} cannot be stored as dataset "
                              f"{shown(name)}: {exc}; rename the file") from None

    def export(self, cursors: dict[str, Any], full: bool) -> Iterator[DatasetExport]:
        for name, file in self.datasets().items():
            if file.suffix.lower() == ".csv":
                columns = _csv_header(file)
                yield DatasetExport(name, _read_csv(file, self.path), meta={"columns": columns},
                                    reopen=partial(_read_csv, file, self.path))
            else:
                yield DatasetExport(name, _read_jsonl(file, self.path, name), encoded=True,
                                    reopen=partial(_read_jsonl, file, self.path, name))
        for name, files in sorted(self.seller_center.items()):
            yield sellercenter.export(name, files)


def _where(file: Path, root: Path, line: int) -> str:
    return f"{file.relative_to(root)} line {line}"


@contextmanager
def read_errors(label: str, file: Path) -> Iterator[None]:
    """Turn what reading an export file can raise into one-line SourceErrors naming it."""
    try:
        yield
    except UnicodeDecodeError:
        raise SourceError(f"{label}: not UTF-8 text") from None
    except csv.Error as exc:
        raise SourceError(f"{label}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise SourceError(f"cannot read {file}: {exc.strerror}") from None


def bounded_lines(fh: IO[Any], label: str) -> Iterator[Any]:
    """The lines of an open file, refusing one longer than MAX_LINE (bytes or characters):
    records are kilobytes, and a file without line breaks would otherwise be read whole."""
    while line := fh.readline(MAX_LINE + 1):
        if len(line) > MAX_LINE:
            raise SourceError(f"{label}: a line is longer than {MAX_LINE} bytes")
        yield line


def jsonl_blocks(fh: IO[bytes], label: str) -> Iterator[list[bytes]]:
    """The lines of an open binary file, without their line breaks, a block of about BLOCK
    bytes at a time (splitting a block is much cheaper than reading line by line). A line
    longer than MAX_LINE is refused as soon as that is known; memory stays bounded by it."""
    pending: list[bytes] = []
    pending_len = 0
    while block := fh.read(BLOCK):
        if b"\n" not in block:
            pending.append(block)
            pending_len += len(block)
            if pending_len > MAX_LINE:
                raise SourceError(f"{label}: a line is longer than {MAX_LINE} bytes")
            continue
        if pending:
            pending.append(block)
            block = b"".join(pending)
            pending, pending_len = [], 0
        lines = block.split(b"\n")
        tail = lines.pop()
        if max(map(len, lines)) >= MAX_LINE:  # counting its line break
            raise SourceError(f"{label}: a line is longer than {MAX_LINE} bytes")
        yield lines
        if tail:
            pending, pending_len = [tail], len(tail)
    if pending:
        last = b"".join(pending)
        if len(last) > MAX_LINE:
            raise SourceError(f"{label}: a line is longer than {MAX_LINE} bytes")
        yield [last]


def _read_jsonl(file: Path, root: Path, dataset: str) -> Iterator[Line]:
    label = str(file.relative_to(root))
    n = 0
    with read_errors(label, file), open(file, "rb") as fh:
        for lines in jsonl_blocks(fh, label):
            for line in lines:
                n += 1
                if not line or line.isspace():
                    continue
                try:
                    encoded = encode_text(line, dataset)
                except UnicodeDecodeError:
                    raise SourceError(f"{_where(file, root, n)}: not UTF-8 text") from None
                except ValueError:
                    raise SourceError(f"{_where(file, root, n)}: not valid JSON") from None
                except SourceError as exc:  # no usable id, or a value JSON cannot hold
                    raise SourceError(f"{_where(file, root, n)}: {exc}") from None
                if encoded is None:
                    raise SourceError(f"{_where(file, root, n)}: not a JSON object")
                yield encoded


def _csv_header(file: Path) -> list[str]:
    try:
        with open(file, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(bounded_lines(fh, file.name)), [])
    except (UnicodeDecodeError, csv.Error):
        raise SourceError(f"{file.name}: not a readable UTF-8 CSV file") from None
    except OSError as exc:
        raise SourceError(f"cannot read {file}: {exc.strerror}") from None
    if "id" not in header:
        raise SourceError(f"{file.name}: the CSV header has no 'id' column")
    if len(set(header)) != len(header):
        raise SourceError(f"{file.name}: the CSV header repeats a column name")
    return header


def _read_csv(file: Path, root: Path) -> Iterator[Record]:
    with (read_errors(str(file.relative_to(root)), file),
          open(file, encoding="utf-8-sig", newline="") as fh):
            reader = csv.reader(bounded_lines(fh, str(file.relative_to(root))))
            header = next(reader, [])
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise SourceError(f"{_where(file, root, reader.line_num)}: has {len(row)} "
                                      f"fields, the header has {len(header)}")
                yield dict(zip(header, row, strict=True))
