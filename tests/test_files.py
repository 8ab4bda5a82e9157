"""Atomic writes: a folder is replaced whole or not at all, and a killed run's leftovers go."""

from __future__ import annotations

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
