"""samples/: the documents README's and the docs' examples read, as the script draws them.

scripts/make_samples.py draws them again here, in memory; each committed file must be
what it draws (images compared by their pixels, PDFs by each page's text and pixels:
file bytes may differ with a library's compressor), and small.
"""

from __future__ import annotations

import io

import pymupdf
import pytest
from PIL import Image

from scripts.make_samples import samples
from tests.harness import ROOT

SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def drawn() -> dict[str, bytes]:
    return samples()


def pages(data: bytes) -> list[tuple[str, bytes]]:
    """Each page's text and pixels at 50 dpi."""
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return [(page.get_text(), page.get_pixmap(dpi=50).samples) for page in doc]


def test_the_samples_are_what_the_script_draws(drawn: dict[str, bytes]) -> None:
    assert sorted(p.name for p in SAMPLES.iterdir()) == sorted(drawn)
    for name, data in drawn.items():
        committed = (SAMPLES / name).read_bytes()
        if name.endswith(".png") and name != "broken.png":
            with Image.open(io.BytesIO(data)) as new, Image.open(SAMPLES / name) as old:
                assert (old.mode, old.size) == (new.mode, new.size), name
                assert old.tobytes() == new.tobytes(), f"{name}: run scripts/make_samples.py"
        elif name.endswith(".pdf"):
            assert pages(committed) == pages(data), f"{name}: run scripts/make_samples.py"
        else:
            assert committed == data, f"{name}: run scripts/make_samples.py"


def test_the_samples_are_small_and_what_they_say(drawn: dict[str, bytes]) -> None:
    assert all(len(data) < 64_000 for data in drawn.values()), \
        {name: len(data) for name, data in drawn.items()}
    with pymupdf.open(stream=drawn["report.pdf"], filetype="pdf") as report:
        texts = [page.get_text() for page in report]
        assert [len(page.get_images()) for page in report] == [0, 1, 0]
    assert texts[0].startswith("Riverside Community Library: Annual Report")
    assert texts[1] == ""  # the scan: an image only, no text layer
    assert texts[2].startswith("Plans for next year")
    with pymupdf.open(stream=drawn["handbook.pdf"], filetype="pdf") as handbook:
        assert handbook.page_count == 10
        assert all(page.get_text() and not page.get_images() for page in handbook)
    with Image.open(io.BytesIO(drawn["letter.png"])) as letter:
        assert letter.mode == "1" and letter.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(drawn["broken.png"])).load()
