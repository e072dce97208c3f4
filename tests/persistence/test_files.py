"""Atomic writes: an overwritten file keeps its permissions and links, errors name it."""

from __future__ import annotations

import os
import stat

import pytest

from rest_fair.persistence.files import atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604], ids=oct)
def test_an_overwritten_file_keeps_its_permission_bits(tmp_path, mode):
    path = tmp_path / "model.rest"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert _mode(path) == mode  # a private file stays private


def test_a_new_file_gets_the_permissions_open_gives_it(tmp_path):
    atomic_write(tmp_path / "new.rest", b"new")
    with open(tmp_path / "opened.rest", "wb") as fh:
        fh.write(b"new")
    assert _mode(tmp_path / "new.rest") == _mode(tmp_path / "opened.rest")


def test_a_symbolic_link_is_followed_and_kept(tmp_path):
    (tmp_path / "releases").mkdir()
    target = tmp_path / "releases" / "v3.rest"
    target.write_bytes(b"v3")
    link = tmp_path / "current.rest"
    link.symlink_to(target)
    atomic_write(link, b"v4")
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes() == b"v4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.rest", "releases"]
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["v3.rest"]


def test_errors_name_the_file_asked_for_not_a_temporary_one(tmp_path):
    missing = tmp_path / "no such folder" / "model.rest"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(missing, b"x")
    assert info.value.filename == str(missing) and ".tmp" not in str(info.value)
    with pytest.raises(IsADirectoryError) as info:
        atomic_write(tmp_path, b"x")
    assert info.value.filename == str(tmp_path) and ".tmp" not in str(info.value)
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []
    assert not list(tmp_path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["m" * 250 + ".rest", "é" * 125 + ".rest"])
def test_a_name_open_takes_is_written_whatever_its_length(tmp_path, name):
    path = tmp_path / name
    assert len(os.fsencode(name)) <= 255
    with open(path, "wb") as fh:  # the system takes this name
        fh.write(b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_file_this_process_may_not_write_is_refused_not_replaced(tmp_path, monkeypatch):
    # open(path, "wb") refuses a read-only file; the rename replaced it. The check asks
    # os.access, which is True for root whatever the bits, so the test plays a user.
    path = tmp_path / "model.rest"
    path.write_bytes(b"kept")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(path)
                        else real_access(p, mode, **kw))
    with pytest.raises(PermissionError, match=r"model\.rest"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.rest"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_or_device_is_written_to_not_replaced(tmp_path):
    # save(os.devnull) must not replace /dev/null by a plain file: a pipe stands in for it
    pipe = tmp_path / "model.rest"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write(pipe, b"model")
        assert os.read(reader, 100) == b"model"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["model.rest"]
