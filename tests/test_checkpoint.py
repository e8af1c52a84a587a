"""The tailer's checkpoint file: round trip, atomic replacement, ordering."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from eventd.sources.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    fingerprint,
    load_checkpoint,
    write_checkpoint,
)

HEAD = b'{"kind":"Event","auditID":"a-1"}\n'


def make(offset: int = 100, **kw: object) -> Checkpoint:
    fields: dict[str, object] = {
        "path": "/var/log/audit.log",
        "device": 64768,
        "inode": 1234,
        "offset": offset,
        "fingerprint": fingerprint(HEAD),
        "fingerprint_bytes": len(HEAD),
        "mtime_ns": 1_700_000_000_000_000_000,
    }
    fields.update(kw)
    return Checkpoint(**fields)  # type: ignore[arg-type]


def test_round_trip_and_private_mode(tmp_path):
    path = tmp_path / "cp.json"
    write_checkpoint(path, make())
    assert load_checkpoint(path) == make()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_file_is_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path / "cp.json") is None


def test_leftover_temp_file_from_a_crash_changes_nothing(tmp_path):
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(100))
    # A crash in the middle of the next save leaves a torn temporary file.
    (tmp_path / "cp.json.tmp").write_bytes(b'{"version":1,"path":"/var/lo')
    assert load_checkpoint(path) == make(100)
    write_checkpoint(path, make(200))
    assert load_checkpoint(path) == make(200)
    assert not (tmp_path / "cp.json.tmp").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version":2}',
        b'{"version":1,"path":"x"}',
        b'{"version":1,"path":"x","device":1,"inode":2,"offset":"3","fingerprint":"f",'
        b'"fingerprint_bytes":1,"mtime_ns":0}',
        b'{"version":1,"path":"x","device":1,"inode":2,"offset":-3,"fingerprint":"f",'
        b'"fingerprint_bytes":1,"mtime_ns":0}',
    ],
)
def test_unusable_content_is_an_error(tmp_path, content):
    path = tmp_path / "cp.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    # The store logs it and behaves as if there were none.
    assert CheckpointStore(path).load() is None


def test_same_content_compares_only_the_fingerprinted_start():
    cp = make()
    assert cp.same_content(HEAD)
    assert cp.same_content(HEAD + b"more lines\n")
    assert not cp.same_content(HEAD[:-1])
    assert not cp.same_content(b"X" + HEAD[1:])
    empty = make(offset=0, fingerprint=fingerprint(b""), fingerprint_bytes=0)
    assert empty.same_content(b"") and empty.same_content(b"anything")


def test_store_never_moves_backwards_and_skips_unchanged(tmp_path):
    path = tmp_path / "state" / "cp.json"  # the directory is created on the first save
    store = CheckpointStore(path)
    assert store.save(make(300), seq=3)
    assert not store.save(make(200), seq=2)  # an older save finishing late
    assert load_checkpoint(path) == make(300)
    assert not store.save(make(300), seq=4)  # unchanged: no needless fsync
    assert store.save(make(400), seq=5)
    assert load_checkpoint(path) == make(400)


def test_concurrent_saves_leave_the_newest(tmp_path):
    path = tmp_path / "cp.json"
    store = CheckpointStore(path)
    threads = [threading.Thread(target=store.save, args=(make(n), n)) for n in range(1, 41)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whatever the interleaving, the newest position is the one on disk, and
    # no temporary file is left behind.
    assert load_checkpoint(path) == make(40)
    assert os.listdir(tmp_path) == ["cp.json"]
