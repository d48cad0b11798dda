"""Private folders (0700) and secret files (0600), written atomically, tightened when loose."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from aimesh._private_files import ensure_private_dir, read_secret_file, write_secret_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_folders_are_made_0700_down_from_the_top_and_not_above(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    user.chmod(0o755)
    home = user / "home"
    made = ensure_private_dir(home / "bus" / "deep", top=home)
    assert made == home / "bus" / "deep"
    assert [mode(p) for p in (home, home / "bus", made)] == [0o700] * 3
    assert mode(user) == 0o755


def test_loose_private_folders_are_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "bus").mkdir(parents=True)
    home.chmod(0o777)
    (home / "bus").chmod(0o755)
    ensure_private_dir(home / "bus", top=home)
    assert mode(home) == 0o700 and mode(home / "bus") == 0o700
    ensure_private_dir(home / "bus", top=home)  # and again: nothing to do
    assert mode(home / "bus") == 0o700


def test_a_folder_outside_its_top_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not inside"):
        ensure_private_dir(tmp_path / "a", top=tmp_path / "b")


def test_a_secret_file_is_0600_whatever_the_umask_and_replaced_whole(tmp_path: Path) -> None:
    import os

    old = os.umask(0o000)
    try:
        write_secret_file(tmp_path / "token", "first\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "token") == 0o600
    write_secret_file(tmp_path / "token", b"second")
    assert read_secret_file(tmp_path / "token") == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary left behind


def test_a_secret_file_readable_by_others_is_tightened_and_its_content_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text("do-not-log-me\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_secret_file(path) == "do-not-log-me"
    assert mode(path) == 0o600
    assert "tightening" in caplog.text and "do-not-log-me" not in caplog.text
    assert read_secret_file(tmp_path / "missing") is None
