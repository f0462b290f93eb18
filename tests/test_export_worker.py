"""The export process and the parent's view of it (sellerbak/backup/worker.py)."""

from __future__ import annotations

import hmac
import os
import threading
import time

from sellerbak.backup.chunker import Chunker
from sellerbak.backup.exporters.demo import DemoSource
from sellerbak.backup.worker import ChunkerParams, ExportStream
from sellerbak.records import encode_records

PARAMS = ChunkerParams(key=os.urandom(64), target=8192, maximum=65536, id_key=os.urandom(32))


def test_chunks_arrive_cut_and_identified_as_the_parent_would_do_it() -> None:
    """The export process cuts chunks and computes their keyed ids: both must be exactly what
    the parent's own chunker and the repository's chunk id give (a wrong id would store data
    under a name it cannot be verified against)."""
    source = DemoSource("shop", seed=3, orders=300)
    stream = ExportStream(source, {}, True, PARAMS)
    try:
        got = {d.name: [(c.data, c.chunk_id) for c in d.chunks()] for d in stream.datasets()}
    finally:
        stream.close()
    assert set(got) >= {"orders", "products", "customers"}
    for export in DemoSource("shop", seed=3, orders=300).export({}, True):
        chunker = Chunker(PARAMS.key, PARAMS.target, PARAMS.maximum)
        expected = [c.data for key, line in encode_records(export.records, export.name)
                    if (c := chunker.feed(key, line)) is not None]
        if (last := chunker.flush()) is not None:
            expected.append(last.data)
        assert [data for data, _ in got[export.name]] == expected, export.name
        for data, chunk_id in got[export.name]:
            assert chunk_id == hmac.digest(PARAMS.id_key, data, "sha256")


def test_closing_a_stream_midway_stops_the_export_and_its_reader() -> None:
    """The parent reads ahead on a thread of its own; stopping after one chunk (a failure
    elsewhere, Ctrl-C) must end the export process and that thread, not leave either
    waiting on the other."""
    stream = ExportStream(DemoSource("shop", seed=3, orders=20000), {}, True, PARAMS)
    proc = stream._proc
    assert proc is not None and proc.is_alive()
    dataset = next(stream.datasets())
    next(iter(dataset.chunks()))
    time.sleep(0.5)  # the reader fills its queue and the export blocks on the pipe
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 10
    assert not proc.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "export-pump"]
