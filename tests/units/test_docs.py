"""The documentation's links and settings hold: runs in the test process only.

Every relative link in README.md, docs/*.md and bench/README.md names a file that
exists and, for `#anchor`, a heading of that file (GitHub's slugs); every docs page is
linked from README.md; docs/settings.md is the generator's output and names exactly
the `Settings` fields; every `OCR_*` name the pages mention is a setting (or one of
the few variables that are not, listed below).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import fields
from pathlib import Path
from urllib.parse import unquote

import pytest

from tasks.settings import Settings, settings_markdown

ROOT = Path(__file__).resolve().parents[2]

# `OCR_*` names in the pages that are not Settings fields, and what they are.
NOT_SETTINGS = {
    "OCR_TOKEN": "the shell variable of the HTTP API's curl example",
    "OCR_QUEUES": "the Procfile's worker line (docs/settings.md's Procfile-only variables)",
    "OCR_FLOWER_OPEN": "read by scripts/run_flower.py (docs/settings.md, same list)",
    "OCR_QUEUE_URL": "the OCRmyPDF plugin's, in OCRmyPDF's environment (docs/ocrmypdf.md)",
    "OCR_QUEUE_TOKEN": "the OCRmyPDF plugin's, in OCRmyPDF's environment (docs/ocrmypdf.md)",
    "OCR_TEST_CORPUS": "the tests' corpus folder, read by devkit/corpus.py (docs/testing.md)",
}

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target) and ![alt](target); the target up to a space (a title) or `)`.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def pages() -> list[Path]:
    """Every Markdown page this test reads."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "bench" / "README.md"]


def prose(text: str) -> str:
    """The page without its fenced code blocks (links there are not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text.

    Its rendered text, lower case: letters, digits, `-` and `_` kept, spaces made `-`,
    everything else (punctuation, `*`, backticks) dropped.
    """
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    out = []
    for char in text.strip().lower():
        category = unicodedata.category(char)
        if char in "-_" or category[0] in "LN" or category == "Mn":
            out.append(char)
        elif char == " ":
            out.append("-")
    return "".join(out)


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, numbered as GitHub numbers repeats."""
    seen: Counter[str] = Counter()
    found = set(HTML_ANCHOR.findall(path.read_text()))
    for match in HEADING.finditer(prose(path.read_text())):
        base = slug(match.group(2))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """The relative link targets of a page (web addresses and mail left out)."""
    text = CODE_SPAN.sub("", prose(path.read_text()))
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]


def broken_links(path: Path) -> list[str]:
    """Each link of `path` whose file or heading does not exist, with the reason."""
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest}")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, "\n".join(broken)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Its `section`: one\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](other.md#its-section-one) [self](#title)\n"
                    "[gone](missing.md) [bad anchor](other.md#nowhere) "
                    "[web](https://example.org/x.md)\n\n```\n[in code](nothing.md)\n```\n")
    assert [reason.split(":")[0] for reason in broken_links(page)] == [
        "missing.md", "other.md#nowhere"]


def test_slugs_follow_github() -> None:
    assert slug("Architecture: the rooms of `tasks/`") == "architecture-the-rooms-of-tasks"
    assert slug("The VLM behind an inference server (vlm-api)") == \
        "the-vlm-behind-an-inference-server-vlm-api"
    assert slug("Failure (task state `FAILURE`)") == "failure-task-state-failure"
    assert slug("One model copy behind a server (2 GPUs, `bench/vlm_api.py`)") == \
        "one-model-copy-behind-a-server-2-gpus-benchvlm_apipy"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve()
              for target in links(ROOT / "README.md")}
    unlinked = [str(page.relative_to(ROOT)) for page in sorted((ROOT / "docs").glob("*.md"))
                if page.resolve() not in linked]
    assert unlinked == []


def setting_names() -> set[str]:
    return {f.metadata["setting"].env for f in fields(Settings)}


def test_settings_page_is_generated_and_names_every_setting() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, re.M))
    assert sorted(documented - setting_names()) == [], "documented, but no Settings field"
    assert sorted(setting_names() - documented) == [], "a Settings field not documented"
    assert text == settings_markdown(), \
        "docs/settings.md is stale: run `.venv/bin/python worker_config.py > docs/settings.md`"


def test_every_ocr_variable_the_pages_name_is_a_setting() -> None:
    known = setting_names() | set(NOT_SETTINGS)
    unknown = {f"{page.relative_to(ROOT)}: {name}" for page in pages()
               for name in re.findall(r"\bOCR_[A-Z0-9_]*[A-Z0-9]\b", page.read_text())
               if name not in known}
    assert not unknown, "\n".join(sorted(unknown))


def test_every_test_the_pages_name_exists() -> None:
    """`test_foo` in a page is a file tests/<layer>/test_foo.py or a test function there."""
    defined = {path.stem for path in (ROOT / "tests").glob("*/test_*.py")}
    for path in (ROOT / "tests").glob("*/test_*.py"):
        defined |= set(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M))
    named = {f"{page.relative_to(ROOT)}: {name}" for page in pages()
             for name in re.findall(r"\btest_\w+", page.read_text()) if name not in defined}
    assert not named, "\n".join(sorted(named))
