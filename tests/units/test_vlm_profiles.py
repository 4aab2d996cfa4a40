"""VLM model profiles and output normalisers, on real replies and documented shapes.

Real replies and their provenance are in tests/fixtures/vlm/replies/ (MANIFEST.tsv); formats
without a captured reply have hand-written fixtures in tests/fixtures/vlm/ (README there).
Pure code: no worker, no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.engines.vlm.profiles import PROFILES, VlmOutput, select_profile
from tasks.engines.vlm.replies import markdown_to_text
from tasks.engines.vlm.reply_formats import clean_doctags, doctags_document
from tasks.errors import EngineUnavailable

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vlm"
SAMPLES = FIXTURES / "replies"
DOCTAGS = ("doctags_smoldocling_page_with_pic", "doctags_01030000000083_tables",
           "doctags_01030000000111_picture_formula", "doctags_barchart_chart")


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def normalise(profile: str, raw: str, **kw: object) -> VlmOutput:
    return PROFILES[profile].normalise(raw, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- selection

def model_folder(tmp_path: Path, name: str, config: object | None = None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("folder", "config", "expected"), [
    ("olmOCR-2-7B-1025-mlx-4bit", {"model_type": "qwen2_5_vl"}, "olmocr"),
    ("SmolDocling-256M-preview-mlx-bf16", {"model_type": "idefics3"}, "docling"),
    ("granite-docling-258M-mlx", {"model_type": "idefics3"}, "docling"),
    ("DeepSeek-OCR-8bit", {"model_type": "deepseek_vl_v2"}, "deepseek-ocr"),
    ("some-folder", {"model_type": "deepseekocr"}, "deepseek-ocr"),
    ("ocr-model", {"architectures": ["DeepseekOCRForCausalLM"]}, "deepseek-ocr"),
    ("Nanonets-OCR-s-bf16", {"model_type": "qwen2_5_vl"}, "nanonets"),
    ("PaddleOCR-VL-0.9B", {"model_type": "paddleocr_vl"}, "paddleocr-vl"),
    ("renamed", {"model_type": "paddleocr_vl"}, "paddleocr-vl"),
    ("dots.ocr-bf16", {"model_type": "qwen2"}, "dots-ocr"),
    ("m", {"model_type": "dots_ocr"}, "dots-ocr"),
    ("local", {"model_type": "qwen2_5_vl", "_name_or_path": "allenai/olmOCR-7B-0825"},
     "olmocr"),
    ("Qwen2.5-VL-3B-Instruct-4bit", {"model_type": "qwen2_5_vl"}, "generic"),
    ("Qwen3-VL-4B", {"model_type": "qwen3_vl"}, "generic"),
    ("tiny", {"model_type": "qwen2_vl"}, "generic"),
    ("no-config", None, "generic"),
    ("bad-config", ["not", "an", "object"], "generic"),
])
def test_profile_from_folder_and_config(tmp_path: Path, folder: str, config: object,
                                        expected: str) -> None:
    assert select_profile(model_folder(tmp_path, folder, config)).name == expected


def test_forced_profile_wins_and_unknown_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "olmOCR-7B", {"model_type": "qwen2_5_vl"})
    assert select_profile(folder, "docling").name == "docling"
    assert select_profile(folder, " DeepSeek-OCR ").name == "deepseek-ocr"
    assert select_profile(folder, "").name == "olmocr"
    with pytest.raises(EngineUnavailable) as err:
        select_profile(folder, "olm-ocr")
    assert err.value.code == "engine_unavailable"
    assert "generic" in err.value.message and "dots-ocr" in err.value.message


def test_profiles_budgets_and_trained_prompts() -> None:
    assert set(PROFILES) == {"generic", "olmocr", "docling", "deepseek-ocr", "nanonets",
                             "paddleocr-vl", "dots-ocr"}
    assert all(p.max_tokens >= 4096 and p.longest_side > 0 for p in PROFILES.values())
    assert PROFILES["generic"].longest_side == 1288
    assert PROFILES["olmocr"].max_tokens == 8000
    # Each trained prompt is the one in the provenance files, byte for byte.
    prompts = {name: json.loads(sample(f"{name}.prompts.json")) for name in
               ("olmocr", "doctags", "deepseekocr", "nanonets_ocr", "paddleocr_vl",
                "dotsocr")}
    assert PROFILES["olmocr"].prompt == prompts["olmocr"]["no_anchoring_v4_yaml"]["text"]
    assert PROFILES["docling"].prompt == prompts["doctags"]["GRANITEDOCLING_MLX"]["text"]
    for spec in ("SMOLDOCLING_MLX", "GRANITEDOCLING_MLX"):
        assert set(prompts["doctags"][spec]["stop_strings"]) <= set(
            PROFILES["docling"].stop_strings)
    assert "<image>\n" + PROFILES["deepseek-ocr"].prompt == \
        prompts["deepseekocr"]["document_markdown"]["text"]
    assert PROFILES["nanonets"].prompt == prompts["nanonets_ocr"]["model_card"]["text"]
    assert PROFILES["nanonets"].system_prompt == prompts["nanonets_ocr"]["model_card"]["system"]
    assert PROFILES["paddleocr-vl"].prompt == prompts["paddleocr_vl"]["ocr"]["text"]
    assert PROFILES["paddleocr-vl"].image_first
    assert PROFILES["dots-ocr"].prompt == prompts["dotsocr"]["modes"]["prompt_layout_all_en"]


# ----------------------------------------------------------------------------- generic

def test_generic_strips_a_wrapping_fence_and_reads_tables_as_text() -> None:
    out = normalise("generic", fixture("generic_fenced.md"))
    assert out.markdown.startswith("## Minutes of the Meeting")
    assert "```" not in out.markdown
    assert out.text.splitlines() == ["Minutes of the Meeting", "", "Item\tOwner",
                                     "Budget\tAna", "Hiring\tBen", "",
                                     "1. Open the meeting.", "2. Close it."]
    assert normalise("generic", "  plain text, no fence \n").markdown == \
        "plain text, no fence"
    inner = "Use ```code``` inline"
    assert normalise("generic", inner).markdown == inner


def test_markdown_to_text_removes_syntax_and_keeps_words() -> None:
    markdown = ("# Title #\n\n**bold** and *it* and _under_ and snake_case_name and "
                "2*3*4\n\n> quoted [link](http://x) ![fig](a.png) `code`\n\n---\n\n"
                "<p>Para&amp;graph<br>next</p>\n\n- item\n\nx\\_y")
    assert markdown_to_text(markdown).splitlines() == [
        "Title", "", "bold and it and under and snake_case_name and 2*3*4", "",
        "quoted link  code", "", "Para&graph", "next", "", "- item", "", "x_y"]


# ----------------------------------------------------------------------------- olmOCR

def test_olmocr_front_matter_on_real_format_examples() -> None:
    edgar = normalise("olmocr", sample("olmocr_format_edgar.md"))
    assert edgar.language == "en" and edgar.rotation == 0
    assert dict(edgar.flags) == {"is_rotation_valid": True, "is_table": True,
                                 "is_diagram": False}
    assert edgar.text.startswith("Edgar (or Eadgar;[1] c. 944")
    assert "primary_language" not in edgar.markdown and "---" not in edgar.markdown

    table = normalise("olmocr", sample("olmocr_format_synth_table_trimmed.md"))
    assert table.flags["is_table"] is True
    assert "<table" in table.markdown and "<td" not in table.text
    assert "Annex I: Annual mid-year population" in table.text


def test_olmocr_blank_page_rotation_and_lower_case_booleans() -> None:
    blank = normalise("olmocr", sample("olmocr_format_blank_page.md"))
    assert blank.markdown == "" and blank.text == ""
    assert blank.flags["is_rotation_valid"] is True

    turned = normalise("olmocr", sample("olmocr_mock_rotation_invalid.md"))
    assert turned.flags["is_rotation_valid"] is False
    assert turned.rotation == 90  # rotation_correction: 90, counter-clockwise (PIL)
    assert turned.text == "This document appears to be rotated and needs correction."

    guided = normalise("olmocr", fixture("olmocr_guided.md"))
    assert guided.language is None and guided.rotation == 180
    assert guided.flags == {"is_rotation_valid": False, "is_table": False,
                            "is_diagram": True}
    assert guided.text == "Figure 2: Flow of the water through the turbine."


def test_olmocr_malformed_front_matter_is_text() -> None:
    out = normalise("olmocr", fixture("olmocr_malformed.md"))
    assert out.flags == {} and out.rotation is None and out.language is None
    assert "Dear Sir, thank you for your letter." in out.text
    assert "page_kind: letter" in out.text
    assert normalise("olmocr", "no front matter at all").text == "no front matter at all"


# ----------------------------------------------------------------------------- DocTags

@pytest.mark.parametrize("name", DOCTAGS)
def test_doctags_conversion_matches_docling_core_reference(name: str) -> None:
    """The calls docling makes, on the cleaned reply, give exactly the reference Markdown."""
    raw = sample(f"{name}.dt")
    reference = sample(f"reference_markdown/{name}.docling-core-2.104.0.md")
    assert doctags_document(clean_doctags(raw)).export_to_markdown() == reference


@pytest.mark.parametrize("name", DOCTAGS)
def test_doctags_normaliser_on_real_replies(name: str) -> None:
    out = normalise("docling", sample(f"{name}.dt"))
    reference = sample(f"reference_markdown/{name}.docling-core-2.104.0.md")
    # Every reference block is kept, bar the picture-class lines docling prints.
    for block in reference.split("\n\n"):
        if block.strip() and block not in ("Other", "Bar chart"):
            assert block in out.markdown
    for token in ("<loc_", "<doctag>", "Assistant:", "<end_of_utterance>", "<otsl>"):
        assert token not in out.markdown and token not in out.text
    assert out.boxes and all(0.0 <= v <= 1.0 for _, box in out.boxes for v in box)


def test_doctags_keeps_page_headers_and_tables_as_text() -> None:
    out = normalise("docling", sample("doctags_smoldocling_page_with_pic.dt"))
    assert out.text.startswith("Optimized Table Tokenization for Table Structure Recognition")
    assert ("page_header", (0.27, 0.066, 0.814, 0.08)) in out.boxes
    assert "\nOther\n" not in out.markdown
    tables = normalise("docling", sample("doctags_01030000000083_tables.dt"))
    assert "Commercial\t529\t10.1%\t817\t3.9%" in tables.text.splitlines()
    assert "|" not in tables.text


def test_doctags_cut_at_the_stop_string_and_free_text() -> None:
    out = normalise("docling", fixture("granite_docling_cut.dt"))
    assert out.markdown.splitlines() == ["Annual Report 2024", "", "## 1. Introduction", "",
                                         "This report covers the year."]
    assert [label for label, _ in out.boxes] == ["page_header", "section_header", "text"]
    assert normalise("docling", "<doctag>just words</doctag>").text == "just words"
    assert normalise("docling", "").text == ""


# ----------------------------------------------------------------------------- DeepSeek-OCR

def test_deepseek_grounding_tags_stripped_boxes_kept() -> None:
    raw = sample("deepseekocr_2206.01062_p1_title.md")
    out = normalise("deepseek-ocr", raw)
    assert "<|ref|>" not in out.markdown and "<|det|>" not in out.markdown
    assert "<center>" not in out.markdown
    assert len(out.boxes) == raw.count("<|ref|>") == 16
    label, box = out.boxes[0]
    assert label == "title"
    assert box == pytest.approx((171 / 999, 101 / 999, 825 / 999, 150 / 999))
    assert "image" in [label for label, _ in out.boxes]
    assert out.markdown.startswith("# DocLayNet: A Large Human-Annotated Dataset")
    assert not any(line.endswith(" ") for line in out.markdown.splitlines())
    reference = sample("reference_markdown/deepseekocr_2206.01062_p1_title."
                       "docling-groundtruth.md")
    for block in reference.split("\n\n"):
        if block.strip() and "center" not in block and "<!--" not in block:
            assert block.strip() in out.markdown
    assert "Figure 1: Four examples of complex page layouts" in out.text


def test_deepseek_table_page_and_untagged_first_paragraph() -> None:
    out = normalise("deepseek-ocr", sample("deepseekocr_2305.03393v1_p9_table.md"))
    assert out.markdown.startswith("order to compute the TED score.")
    assert [label for label, _ in out.boxes][:5] == ["sub_title", "text", "table",
                                                     "table_caption", "sub_title"]
    assert "<table>" in out.markdown
    lines = out.text.splitlines()
    assert "6\t6\tOTSL\t0.965\t0.934\t0.955\t0.88\t2.73" in lines
    assert "5.2 Quantitative Results" in lines


def test_deepseek_free_ocr_end_token() -> None:
    out = normalise("deepseek-ocr", fixture("deepseek_free_ocr.md"))
    assert out.text == ("The quick brown fox jumps over the lazy dog.\n\n"
                        "Second paragraph of the page.")
    assert out.boxes == ()


# ----------------------------------------------------------------------------- others

def test_nanonets_tags() -> None:
    out = normalise("nanonets", fixture("nanonets_page.md"))
    assert out.flags == {"page_number": "3/12", "watermarks": ["OFFICIAL COPY"], "images": 1}
    assert "<img>" in out.markdown
    assert "bar chart" not in out.text
    lines = out.text.splitlines()
    assert lines[0] == "OFFICIAL COPY"
    assert "Quarter\tRevenue" in lines and "Q2\t1,450" in lines
    assert "☑ Approved ☐ Rejected" in lines and lines[-1] == "3/12"


def test_paddleocr_vl_text_and_otsl_table() -> None:
    plain = normalise("paddleocr-vl", fixture("paddleocr_vl_ocr.txt"))
    assert plain.text == plain.markdown == ("INVOICE No. 2041\nDate: 14 May 2024\n"
                                            "Total due: 318.40 EUR")
    table = normalise("paddleocr-vl", fixture("paddleocr_vl_table.txt"))
    assert table.markdown.splitlines() == [
        "| Name | Qty | Price |", "| --- | --- | --- |", "| Paper A4 | 10 | 4.50 |",
        "| Toner |  | 62.00 |", "|  |  | 66.50 |"]
    assert table.text.splitlines()[:2] == ["Name\tQty\tPrice", "Paper A4\t10\t4.50"]


def test_dots_ocr_layout_json_cut_reply() -> None:
    raw = sample("dotsocr_2206.01062_p1.json")
    out = normalise("dots-ocr", raw, image_size=(1224, 1584))
    assert out.flags == {"layout_json": True, "layout_complete": False}
    assert out.markdown.startswith("arXiv:2206.01062v1 [cs.CV] 2 Jun 2022\n\n"
                                   "# DocLayNet: A Large Human-Annotated Dataset")
    assert '"bbox"' not in out.markdown and "## ABSTRACT" in out.markdown
    labels = [label for label, _ in out.boxes]
    assert labels[:2] == ["Text", "Title"] and "Picture" in labels
    assert out.boxes[0][1] == pytest.approx((29 / 1224, 435 / 1584, 74 / 1224, 1121 / 1584))
    assert normalise("dots-ocr", raw).boxes == ()  # pixels need the image size

    lists = normalise("dots-ocr", sample("dotsocr_multi_page_p1_lists.json"))
    assert "The Evolution of the Word Processor" in lists.text.splitlines()
    assert "**" not in lists.text


def test_dots_ocr_closed_array_formula_and_other_modes() -> None:
    raw = json.dumps([{"bbox": [0, 0, 10, 10], "category": "Formula", "text": "E = mc^2"},
                      {"bbox": [0, 10, 10, 20], "category": "Picture"},
                      {"bbox": [0, 20, 10, 30], "category": "Page-footer", "text": "7"}])
    out = normalise("dots-ocr", raw, image_size=(10, 30))
    assert out.markdown == "$$\nE = mc^2\n$$\n\n7"
    assert out.flags["layout_complete"] is True and len(out.boxes) == 3
    other = normalise("dots-ocr", "Just some text from prompt_ocr.")
    assert other.text == "Just some text from prompt_ocr." and other.flags == {
        "layout_json": False}


def test_a_hub_snapshot_is_known_by_its_repo_id(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--allenai--olmOCR-2-7B-1025" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    assert select_profile(snapshot).name == "generic"  # the folder is only a revision
    assert select_profile(snapshot, model_name="allenai/olmOCR-2-7B-1025").name == "olmocr"
