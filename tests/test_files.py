"""Atomic writes: a folder is replaced whole or not at all, and a killed run's leftovers go."""

from __future__ import annotations

from pathlib import Path

import pytest

from files import atomic_folder


def test_folder_is_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("killed half way")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]          # the earlier folder, untouched
    with atomic_folder(final) as tmp:
        (tmp / "c.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]          # nothing beside it


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path):
    (tmp_path / ".tmp-out-99999").mkdir()                 # what a SIGKILL leaves behind
    (tmp_path / ".old-out-99999").mkdir()
    (tmp_path / ".tmp-other-99999").mkdir()               # another folder's: not ours to touch
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "x").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other-99999", "out"]


def test_ctrl_c_ends_a_stage_with_one_line(capsys):
    from errors import run_stage

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as stop:
        run_stage(interrupted)
    assert stop.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted:") and "run the same command again" in err and "\n" not in err
    # a command that does not resume says what a rerun does instead
    with pytest.raises(SystemExit) as stop:
        run_stage(interrupted, "run it again with --reuse")
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == "interrupted: run it again with --reuse"


def _full_disk(*_args) -> None:
    """A write that the disk refuses as a full one does: ENOSPC from the file object, naming no file."""
    with open("/dev/full", "wb") as f:
        f.write(b"\0" * 65536)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    import numpy as np

    import layout
    from errors import describe_os_error, run_stage
    from files import atomic_write
    target = tmp_path / "metrics" / "evaluate.json"
    with pytest.raises(SystemExit):
        run_stage(lambda: atomic_write(target, _full_disk))
    line = capsys.readouterr().err.strip()
    assert line == f"error: {target}: No space left on device (check free space, permissions and the path)"
    assert not target.exists() and list(target.parent.iterdir()) == []
    monkeypatch.setattr(Path, "write_bytes", _full_disk)
    with pytest.raises(OSError) as caught:
        layout.save_array(tmp_path / "image.b2nd", np.zeros((4, 4, 4), np.float32))
    assert describe_os_error(caught.value) == f"{tmp_path / 'image.b2nd'}: No space left on device"
