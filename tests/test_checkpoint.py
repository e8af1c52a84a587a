"""The tailer's checkpoint file: round trip, atomic replacement, ordering."""

from __future__ import annotations

import dataclasses
import os
import stat
import threading

import orjson
import pytest
import structlog.testing

from eventd.sources.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    Unusable,
    fingerprint,
    load_checkpoint,
    write_checkpoint,
)
from tests.support.fsync_log import SyncLog

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
    # The store reports it as unusable (not as a first start) and moves it
    # aside, kept for a human and out of the way of the next save.
    loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable) and loaded.reason == "invalid"
    assert not path.exists() and loaded.moved_to is not None and loaded.moved_to.read_bytes() == content


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


# ------------------------------------------------------------------ damage


def test_a_changed_field_fails_the_crc(tmp_path):
    """A flipped digit keeps the file valid JSON; only the CRC tells."""
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(100))
    path.write_bytes(path.read_bytes().replace(b'"offset":100', b'"offset":190'))
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(path)


def test_checkpoint_without_crc_from_an_older_version_is_accepted(tmp_path):
    path = tmp_path / "cp.json"
    fields = dataclasses.asdict(make(100))
    path.write_bytes(orjson.dumps({"version": 1, **fields}))
    assert load_checkpoint(path) == make(100)
    # ...but not with a key we do not know (the CRC's name, damaged, would be one).
    path.write_bytes(orjson.dumps({"version": 1, **fields, "crc3Z": 5}))
    with pytest.raises(CheckpointError, match="unknown"):
        load_checkpoint(path)


def test_a_directory_is_unusable_moved_aside_and_the_next_save_works(tmp_path):
    path = tmp_path / "cp.json"
    path.mkdir()
    (path / "inside").write_bytes(b"{}")
    (tmp_path / "cp.json.tmp").mkdir()  # would make every save fail
    store = CheckpointStore(path)
    loaded = store.load()
    assert isinstance(loaded, Unusable) and loaded.reason == "unreadable"
    assert loaded.moved_to == tmp_path / "cp.json.unusable" and (loaded.moved_to / "inside").exists()
    assert store.save(make(300), seq=1)
    assert load_checkpoint(path) == make(300)
    assert CheckpointStore(path).load() == make(300)


def test_missing_checkpoint_is_a_first_start_not_unusable(tmp_path):
    assert CheckpointStore(tmp_path / "cp.json").load() is None


# -------------------------------------------------------------- durability


def test_checkpoint_is_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """A machine crash right after the rename must find the new content: the
    temporary file is fsynced before the rename, the directory after it."""
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(100))
    log = SyncLog(monkeypatch)
    assert CheckpointStore(path).save(make(200), seq=1)
    tmp = tmp_path / "cp.json.tmp"
    assert log.index("sync", tmp) < log.index("rename", path) < log.index("sync", tmp_path)
    assert load_checkpoint(path) == make(200)


# ------------------------------------------------------------ edges (issue 17)


def test_zero_offset_and_empty_fingerprint_are_valid(tmp_path):
    """A file checkpointed before its first line: offset 0, nothing fingerprinted."""
    path = tmp_path / "cp.json"
    start = make(offset=0, fingerprint=fingerprint(b""), fingerprint_bytes=0)
    write_checkpoint(path, start)
    assert load_checkpoint(path) == start


@pytest.mark.parametrize(("offset", "length"), [(-1, 0), (0, -1)])
def test_negative_offset_or_fingerprint_length_is_an_error_naming_the_file(tmp_path, offset, length):
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(offset=offset, fingerprint_bytes=length))
    with pytest.raises(CheckpointError, match="negative") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not json", "not JSON"),
        (b'{"version":99}', "not a version"),
        (b'{"version":1,"path":"x"}', "device"),
        (
            b'{"version":1,"path":"x","device":1,"inode":2,"offset":"3","fingerprint":"f",'
            b'"fingerprint_bytes":1,"mtime_ns":0}',
            "offset is not an integer",
        ),
        (
            b'{"version":1,"path":7,"device":1,"inode":2,"offset":3,"fingerprint":"f",'
            b'"fingerprint_bytes":1,"mtime_ns":0}',
            "path is not a string",
        ),
    ],
)
def test_errors_name_the_file_and_what_is_wrong(tmp_path, content, words):
    path = tmp_path / "cp.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and words in str(err.value)
    loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable) and loaded.error == str(err.value)


def test_a_save_at_the_same_sequence_is_not_newer(tmp_path):
    path = tmp_path / "cp.json"
    store = CheckpointStore(path)
    assert store.save(make(300), seq=3)
    assert not store.save(make(350), seq=3)
    assert load_checkpoint(path) == make(300)


def test_a_loaded_checkpoint_is_not_written_again_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(300))
    store = CheckpointStore(path)
    assert store.load() == make(300)
    syncs = SyncLog(monkeypatch)
    assert not store.save(make(300), seq=1)  # what is on disk already
    assert syncs.events == []
    assert store.save(make(301), seq=2)


def test_the_first_save_creates_private_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "cp.json"
    assert CheckpointStore(path).save(make(), seq=1)
    assert load_checkpoint(path) == make()
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_a_longer_leftover_temporary_file_is_truncated_not_overwritten_in_part(tmp_path):
    """The temporary file is opened with O_TRUNC: a longer leftover from a
    crash must not leave its tail after the new, shorter content."""
    path = tmp_path / "cp.json"
    (tmp_path / "cp.json.tmp").write_bytes(b"}" * 10_000)
    write_checkpoint(path, make(100))
    assert load_checkpoint(path) == make(100)
    assert path.stat().st_size < 1000


def test_a_directory_in_the_way_of_the_unusable_name_takes_the_next_one(tmp_path):
    """A damaged checkpoint is kept for a human even when ``cp.json.unusable``
    is a directory (os.replace cannot put a file there): ``.unusable.1`` then;
    the error reaches the caller too."""
    path = tmp_path / "cp.json"
    path.write_bytes(b"{not json")
    (tmp_path / "cp.json.unusable").mkdir()
    (tmp_path / "cp.json.unusable" / "x").write_bytes(b"")
    loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable) and loaded.reason == "invalid" and loaded.error
    assert loaded.moved_to == tmp_path / "cp.json.unusable.1"
    assert loaded.moved_to.read_bytes() == b"{not json"
    assert not path.exists()


def test_an_unreadable_checkpoint_reports_why(tmp_path):
    path = tmp_path / "cp.json"
    path.mkdir()
    loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable) and loaded.reason == "unreadable"
    assert "directory" in loaded.error.lower()


# ----------------------------------------------- what the operator is told


def test_an_unusable_checkpoint_is_logged_with_its_name_reason_error_and_new_place(tmp_path):
    """Issue 10: the tailer re-reads from the start after an unusable
    checkpoint; the warning is how an operator learns why, and where the
    damaged file went."""
    path = tmp_path / "cp.json"
    path.write_bytes(b"{not json")
    with structlog.testing.capture_logs() as logs:
        loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable)
    assert logs == [
        {
            "event": "audit_log_checkpoint_unusable",
            "log_level": "warning",
            "checkpoint": str(path),
            "reason": "invalid",
            "error": loaded.error,
            "moved_to": str(tmp_path / "cp.json.unusable"),
        }
    ]
    assert str(path) in loaded.error


def test_a_checkpoint_that_cannot_be_moved_aside_says_so_and_is_left_in_place(tmp_path):
    """Ten names are tried (``.unusable``, ``.unusable.1`` ... ``.unusable.9``);
    with a directory in the way of each, the file stays where it is and the
    warning says it was not moved (``moved_to`` null, not the text "None")."""
    path = tmp_path / "cp.json"
    path.write_bytes(b"{not json")
    for n in range(10):
        blocker = tmp_path / ("cp.json.unusable" + (f".{n}" if n else ""))
        blocker.mkdir()
        (blocker / "keep").write_bytes(b"")
    with structlog.testing.capture_logs() as logs:
        loaded = CheckpointStore(path).load()
    assert isinstance(loaded, Unusable) and loaded.moved_to is None
    assert [(entry["event"], entry["moved_to"]) for entry in logs] == [
        ("audit_log_checkpoint_unusable", None)
    ]
    assert path.read_bytes() == b"{not json"
    assert not (tmp_path / "cp.json.unusable.10").exists()


def test_a_directory_left_where_the_temporary_file_goes_is_moved_and_logged(tmp_path):
    path = tmp_path / "cp.json"
    write_checkpoint(path, make(100))
    (tmp_path / "cp.json.tmp").mkdir()
    with structlog.testing.capture_logs() as logs:
        assert CheckpointStore(path).load() == make(100)
    assert logs == [
        {
            "event": "audit_log_checkpoint_temp_moved",
            "log_level": "warning",
            "checkpoint": str(tmp_path / "cp.json.tmp"),
            "moved_to": str(tmp_path / "cp.json.tmp.unusable"),
        }
    ]
    assert (tmp_path / "cp.json.tmp.unusable").is_dir()
