"""Where tesseract's traineddata lives: discovery across directories, merged data paths.

Pure file-system code (no `tesserocr` import): used by the tesseract adapter in pool
children, by the worker parent to answer `languages` (remote control), and by
`scripts/install_langs.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SUFFIX = ".traineddata"
# Data files that are not languages a job can ask for.
NOT_LANGUAGES = ("osd", "equ")


def find_languages(dirs: Iterable[Path]) -> dict[str, Path]:
    """Language code -> directory holding its traineddata; the first directory wins."""
    found: dict[str, Path] = {}
    for folder in dirs:
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError:
            continue  # vanished or unreadable: it holds nothing usable
        for name in names:
            if name.endswith(SUFFIX):
                found.setdefault(name[: -len(SUFFIX)], folder)
    return found


def languages(dirs: Iterable[Path]) -> list[str]:
    """The language codes a job may ask for, sorted (osd and equ left out)."""
    return sorted(code for code in find_languages(dirs) if code not in NOT_LANGUAGES)


def missing(lang: str, found: dict[str, Path]) -> list[str]:
    """The codes of the language set `lang` (`ell+eng`) without traineddata."""
    return [code for code in lang.split("+") if code not in found]


def data_path(lang: str, found: dict[str, Path], scratch: Path) -> Path:
    """One directory holding every traineddata of `lang` (tesseract takes one path).

    When the codes live in several directories, a folder of symbolic links under
    `scratch` (`scratch/<lang>/`) merges them.
    """
    folders = {found[code] for code in lang.split("+")}
    if len(folders) == 1:
        return folders.pop()
    merged = scratch / lang
    merged.mkdir(parents=True, exist_ok=True)
    for code in lang.split("+"):
        link = merged / f"{code}{SUFFIX}"
        if not link.exists():
            link.symlink_to(found[code] / f"{code}{SUFFIX}")
    return merged
