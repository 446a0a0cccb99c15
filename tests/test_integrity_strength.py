"""zoo.integrity against hashlib and the stamp contract: trust a file without re-hashing only while its
(size, mtime_ns, inode, device) stamp matches, and write a stamp only after a full, matching hash."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from zoo import integrity
from zoo.errors import IntegrityError
from zoo.integrity import is_verified, require_verified, sha256_file, zoo_home


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    return tmp_path / "zoo-home"


def test_zoo_home_follows_zoo_home_then_hf_home_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "explicit"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert zoo_home() == tmp_path / "explicit"
    monkeypatch.setenv("ZOO_HOME", "")
    assert zoo_home() == tmp_path / "hf" / "zoo"
    monkeypatch.delenv("ZOO_HOME")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert zoo_home() == tmp_path / "user" / ".cache" / "huggingface" / "zoo"


@pytest.mark.parametrize("size", [0, 1, 4095, 3 * 7 + 2])
def test_sha256_file_equals_hashlib_across_chunk_boundaries(tmp_path, monkeypatch, size):
    monkeypatch.setattr(integrity, "_CHUNK", 7)  # many chunks, a partial last one
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == _sha(data)


def _stamps(home: Path) -> list[Path]:
    folder = home / "verified"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_first_check_hashes_and_stamps_then_trusts_the_stamp(tmp_path, home, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights" * 100)
    sha = _sha(path.read_bytes())
    assert is_verified(path, sha, size=700)
    [stamp] = _stamps(home)
    stat = os.stat(path)
    key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    assert stamp.name == f"{sha}-{key}.json"
    recorded = json.loads(stamp.read_text())
    assert {k: recorded[k] for k in ("size", "mtime_ns", "ino", "dev")} == {
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino, "dev": stat.st_dev}
    assert recorded.get("ctime_ns", stat.st_ctime_ns) == stat.st_ctime_ns

    def no_hashing(_):
        raise AssertionError("a matching stamp must spare the hash")
    monkeypatch.setattr(integrity, "sha256_file", no_hashing)
    assert is_verified(path, sha, size=700) and is_verified(path, sha)
    # a symlink to the same file shares the stamp (keyed by the real path)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    assert is_verified(link, sha)
    assert len(_stamps(home)) == 1


def test_wrong_size_is_refused_even_with_a_valid_stamp(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert is_verified(path, _sha(b"abc"), size=3)
    assert not is_verified(path, _sha(b"abc"), size=4)
    assert not is_verified(tmp_path / "absent.bin", _sha(b"abc"), size=3)


def test_rewritten_file_is_rehashed_and_never_stamped_when_wrong(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"good bytes")
    sha = _sha(b"good bytes")
    assert is_verified(path, sha)
    path.write_bytes(b"evil bytes")  # same size, new mtime: the stamp no longer matches
    os.utime(path, ns=(1, 1))
    assert not is_verified(path, sha)
    assert not is_verified(path, _sha(b"other"))
    assert len(_stamps(home)) == 1  # no stamp for a failed check
    assert not [p for p in (home / "verified").iterdir() if p.name.endswith(".tmp")]


def test_unreadable_stamp_falls_back_to_hashing(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"payload")
    sha = _sha(b"payload")
    assert is_verified(path, sha)
    [stamp] = _stamps(home)
    stamp.write_text("{not json")
    assert is_verified(path, sha)
    assert json.loads(stamp.read_text())["size"] == 7  # rewritten after the successful hash
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "mtime_ns": 0}))  # a stale stamp
    path.write_bytes(b"PAYLOAD")
    assert not is_verified(path, sha)


def test_require_verified_message_names_what_where_and_the_fix(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"12345")
    require_verified(path, _sha(b"12345"), 5, "model", "re-download it")  # passes silently
    wanted = "ab" * 32
    with pytest.raises(IntegrityError) as caught:
        require_verified(path, wanted, 9, "my-model weights", "Re-export the folder.")
    assert str(caught.value) == (f"my-model weights: {path} does not match the expected sha256 {wanted[:12]}... "
                                 f"(size 5, expected 9). Re-export the folder.")
    with pytest.raises(IntegrityError, match=r"\(size None, expected 9\)"):
        require_verified(tmp_path / "absent", wanted, 9, "x", "y")


def test_unwritable_stamp_folder_still_verifies_and_warns_once(tmp_path, monkeypatch):
    import re
    import warnings

    blocker = tmp_path / "zoo-home-is-a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ZOO_HOME", str(blocker))
    monkeypatch.setattr(integrity, "_warned_read_only", set())
    path = tmp_path / "w.bin"
    path.write_bytes(b"data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert is_verified(path, _sha(b"data"))
        assert is_verified(path, _sha(b"data"))  # hashed again (no stamp), warned once
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    folder = str(blocker / "verified")
    assert re.fullmatch(rf"cannot record verification stamps in {re.escape(folder)} \(([A-Za-z ]+)\); files are "
                        r"verified by a full sha256 on every load\. Set ZOO_HOME to a writable folder to make "
                        r"repeated loads fast\.", str(caught[0].message)), str(caught[0].message)
    assert blocker.read_text() == "not a folder" and not list(tmp_path.glob("*.tmp"))


def test_stamp_records_exactly_the_file_identity(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x")
    assert is_verified(path, _sha(b"x"))
    [stamp] = _stamps(home)
    assert set(json.loads(stamp.read_text())) == {"size", "mtime_ns", "ctime_ns", "ino", "dev"}


def test_require_verified_checks_the_size_too(tmp_path, home):
    path = tmp_path / "w.bin"
    path.write_bytes(b"12345")
    with pytest.raises(IntegrityError, match=r"\(size 5, expected 6\)"):
        require_verified(path, _sha(b"12345"), 6, "model", "fix")
