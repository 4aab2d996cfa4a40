"""A tessdata folder holding exactly the languages a test names, whatever the host has.

Tests that choose a page's languages (`lang=auto`) depend on which languages are
installed: a host with Debian's `tesseract-ocr-spa` reads a Spanish line in `spa`
where one without it warns `lang_missing`. `pinned` makes the engines see a set of the
test's choosing: a folder of symbolic links to this host's traineddata of those codes
(and `osd`), searched instead of every tessdata folder of the host; OCR_TESSDATA_DIR,
where a test sets it, is still searched first. Runs in the test process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tasks.engines import tessdata

if TYPE_CHECKING:
    from tasks.settings import Settings

# The languages `make test-langs` installs (the Makefile's TEST_LANGS, less the ones
# only the multilingual test reads): the set the language unit tests are written for.
UNIT_LANGS = ("eng", "vie", "ell", "chi_sim", "deu", "fra")
_host_dirs = tessdata.search_dirs  # the host's folders, before any test pins a set


def _host_found() -> dict[str, Path]:
    from tasks.settings import Settings

    return tessdata.find_languages(_host_dirs(Settings.from_env({})))


def lacking(codes: Iterable[str]) -> list[str]:
    """The codes of `codes` this host has no traineddata for."""
    found = _host_found()
    return [code for code in codes if code not in found]


def folder_of(codes: Iterable[str], folder: Path) -> Path:
    """`folder` filled with links to this host's traineddata of `codes` and `osd`."""
    found = _host_found()
    for code in (*codes, "osd"):
        name = f"{code}{tessdata.SUFFIX}"
        (folder / name).symlink_to(found[code] / name)
    return folder


@contextmanager
def pinned(codes: Iterable[str], folder: Path) -> Iterator[Path]:
    """While open, the engines find `codes` (and `osd`) alone, from `folder`."""
    own = folder_of(codes, folder)

    def search_dirs(settings: Settings) -> tuple[Path, ...]:
        configured = str(settings.tessdata_dir) not in ("", ".")
        return (settings.tessdata_dir, own) if configured else (own,)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tessdata, "search_dirs", search_dirs)
        yield own
