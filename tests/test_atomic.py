"""nst_jax.atomic: files appear whole or not at all, with ordinary permissions; nst_jax.errors.reason."""

import os

import pytest

from nst_jax import atomic
from nst_jax.errors import reason


@pytest.fixture
def umask():
    """set(mask): the process umask for this test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def names(folder):
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("how", ["atomic_write", "atomic_path"])
def test_replaces_the_file_only_when_the_new_one_is_complete(tmp_path, how):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    if how == "atomic_write":
        with atomic.atomic_write(path) as stream:
            stream.write(b"new, ")
            stream.flush()
            assert path.read_bytes() == b"old"  # meanwhile readers see the old file whole
            (temporary,) = set(names(tmp_path)) - {"out.bin"}
            assert temporary.startswith(".out.bin.")  # hidden, beside the target
            stream.write(b"longer")
    else:
        with atomic.atomic_path(path, ".bin") as temporary:
            assert os.path.dirname(temporary) == str(tmp_path)
            assert os.path.basename(temporary).startswith(".out.bin.") and temporary.endswith(".bin")
            with open(temporary, "wb") as stream:  # as a library given a file name does
                stream.write(b"new, longer")
            assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new, longer"
    assert names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("how", ["atomic_write", "atomic_path"])
def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path, how, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(failure)):
        if how == "atomic_write":
            with atomic.atomic_write(path) as stream:
                stream.write(b"half")
                raise failure
        else:
            with atomic.atomic_path(path) as temporary:
                with open(temporary, "wb") as stream:
                    stream.write(b"half")
                raise failure
    assert names(tmp_path) == ["out.bin"]
    assert path.read_bytes() == b"old"


def test_a_failure_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_write(tmp_path / "new.txt", "w") as stream:
            stream.write("half")
            raise ValueError("the caller's check failed")
    assert names(tmp_path) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_file_gets_what_open_would_give_it_and_the_umask_is_never_touched(tmp_path, umask, monkeypatch,
                                                                             mask, mode):
    umask(mask)
    with open(tmp_path / "plain", "wb"):
        pass
    assert (tmp_path / "plain").stat().st_mode & 0o777 == mode

    def no_umask(_):
        raise AssertionError("os.umask changes the whole process's mask: not safe beside other threads")

    monkeypatch.setattr(os, "umask", no_umask)
    atomic.write_text(tmp_path / "text", "x")
    with atomic.atomic_path(tmp_path / "by-name") as temporary:
        with open(temporary, "wb") as stream:
            stream.write(b"x")
    monkeypatch.undo()
    for name in ("text", "by-name"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_the_data_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic.write_text(tmp_path / "a", "x")
    with atomic.atomic_path(tmp_path / "b"):
        pass
    assert calls == ["fsync", "replace"] * 2


def test_text_is_written_in_the_encoding_asked(tmp_path):
    atomic.write_text(tmp_path / "utf8.txt", "Tübingen")
    assert (tmp_path / "utf8.txt").read_bytes() == "Tübingen".encode()
    with atomic.atomic_write(tmp_path / "latin1.txt", "w", encoding="latin-1") as stream:
        stream.write("Tübingen")
    assert (tmp_path / "latin1.txt").read_bytes() == "Tübingen".encode("latin-1")
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(tmp_path / "x", "a"):
            pass
    assert names(tmp_path) == ["latin1.txt", "utf8.txt"]


def test_check_writable_leaves_nothing_and_raises_where_nothing_can_be_created(tmp_path):
    atomic.check_writable(tmp_path / "out.png")
    assert names(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        atomic.check_writable(tmp_path / "missing" / "out.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        atomic.check_writable(tmp_path / "file" / "out.png")


def test_reason_is_one_short_line():
    assert reason(FileNotFoundError(2, "No such file or directory", "/x/y.png")) == "No such file or directory"
    assert reason(ValueError("bad\n   value\there")) == "bad value here"
    assert reason(ValueError("first line\nsecond line"), first_line=True) == "first line"
    assert reason(ValueError("")) == "ValueError"
    assert reason(KeyError()) == "KeyError"
    assert reason("connection refused") == "connection refused"  # urllib's URLError.reason may be text
