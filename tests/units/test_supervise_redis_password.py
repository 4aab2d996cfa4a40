"""`make run`'s own Redis URL: a password generated once and kept, in a file of mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit

from scripts.supervise import project_redis_url, shown_url, write_private


def test_the_password_is_generated_once_and_kept(tmp_path: Path) -> None:
    url_file = tmp_path / "var" / "redis-url"
    first = project_redis_url(url_file)
    password = urlsplit(first).password
    assert password and len(password) >= 24
    write_private(url_file, first + "\n")
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    again = project_redis_url(url_file)
    assert urlsplit(again).password == password
    assert password not in shown_url(again) and urlsplit(again).port is not None


def test_a_file_left_readable_is_made_private(tmp_path: Path) -> None:
    url_file = tmp_path / "redis-url"
    url_file.write_text("redis://127.0.0.1:6399/0\n")
    url_file.chmod(0o644)
    write_private(url_file, project_redis_url(url_file) + "\n")
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    assert urlsplit(url_file.read_text().strip()).password  # an old URL gets one
