"""VLM model profiles: prompt, page and token budget, and output format per model family.

A profile says how to talk to one family of OCR vision-language models and how to read
its reply: `select_profile` picks it from the model folder (`config.json` `model_type` /
`architectures`, the folder name) or from `OCR_MODEL_PROFILE`; `VlmProfile.normalise`
turns the raw reply into Markdown and plain text (`tasks.engines.vlm.replies`).

Pure code (no mlx import): runs in the pool child that loads the VLM, and in tests.

Prompt provenance: every trained prompt below is copied from the prompt files in
`tests/fixtures/vlm/replies/*.prompts.json` (see its MANIFEST.tsv); each constant names the
upstream file and commit it came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tasks.engines.vlm.replies import VlmOutput
from tasks.engines.vlm.reply_formats import normalise
from tasks.errors import EngineUnavailable
from tasks.settings import DEFAULT_PROMPT

__all__ = ["PROFILES", "VlmOutput", "VlmProfile", "profile_names", "select_profile"]

# Generic chat VLMs (Qwen2/2.5/3-VL, ...): the service's own transcription prompt
# (OCR_PROMPT's default).
GENERIC_PROMPT = DEFAULT_PROMPT

# allenai/olmocr @ f7cfe4c, olmocr/prompts/prompts.py:164 build_no_anchoring_v4_yaml_prompt()
# (olmocr >= v0.4.0, olmOCR-2-7B-1025). The pipeline puts the text before the image.
OLMOCR_PROMPT = (
    "Attached is one page of a document that you must process. Just return the plain text "
    "representation of this document as if you were reading it naturally. Convert "
    "equations to LateX and tables to HTML.\n"
    "If there are any figures or charts, label them with the following markdown syntax "
    "![Alt text describing the contents of the figure](page_startx_starty_width_height.png)\n"
    "Return your output as markdown, with a front matter section on top specifying values "
    "for the primary_language, is_rotation_valid, rotation_correction, is_table, and "
    "is_diagram parameters."
)

# docling-project/docling @ e1cb2b2, docling/datamodel/vlm_model_specs.py:98/:44
# (SMOLDOCLING_MLX, GRANITEDOCLING_MLX): same prompt; stop strings of both models.
DOCLING_PROMPT = "Convert this page to docling."
DOCLING_STOP = ("</doctag>", "<end_of_utterance>", "<|end_of_text|>")

# deepseek-ai/DeepSeek-OCR @ e4ac34e, DeepSeek-OCR-vllm/config.py:27 (PROMPT), without the
# leading "<image>\n": mlx-vlm's chat template (IMAGE_TOKEN_NEWLINE) prepends it.
DEEPSEEK_OCR_PROMPT = "<|grounding|>Convert the document to markdown."
DEEPSEEK_OCR_STOP = ("<｜end▁of▁sentence｜>",)

# docling-project/docling @ e1cb2b2, docling/datamodel/vlm_model_specs.py:282
# (NANONETS_OCR2_TRANSFORMERS.prompt; the nanonets/Nanonets-OCR-s model card's text).
NANONETS_PROMPT = (
    "Extract the text from the above document as if you were reading it naturally. "
    "Return the tables in html format. Return the equations in LaTeX representation. "
    "If there is an image in the document and image caption is not present, add a small "
    "description of the image inside the <img></img> tag; otherwise, add the image caption "
    "inside <img></img>. Watermarks should be wrapped in brackets. "
    "Ex: <watermark>OFFICIAL COPY</watermark>. Page numbers should be wrapped in brackets. "
    "Ex: <page_number>14</page_number> or <page_number>9/22</page_number>. "
    "Prefer using ☐ and ☑ for check boxes."
)

# Blaizzy/mlx-vlm @ 9b13f52, mlx_vlm/models/paddleocr_vl/README.md: task prompt "OCR:";
# the image comes first in the message.
PADDLEOCR_VL_PROMPT = "OCR:"

# rednote-hilab/dots.ocr @ 36d7248, dots_ocr/utils/prompts.py prompt_layout_all_en (the
# default mode of dots_ocr/parser.py), exactly as written, trailing newline included.
DOTS_OCR_PROMPT = (
    "Please output the layout information from the PDF image, including each layout "
    "element's bbox, its category, and the corresponding text content within the bbox.\n"
    "\n"
    "1. Bbox format: [x1, y1, x2, y2]\n"
    "\n"
    "2. Layout Categories: The possible categories are ['Caption', 'Footnote', 'Formula', "
    "'List-item', 'Page-footer', 'Page-header', 'Picture', 'Section-header', 'Table', "
    "'Text', 'Title'].\n"
    "\n"
    "3. Text Extraction & Formatting Rules:\n"
    "    - Picture: For the 'Picture' category, the text field should be omitted.\n"
    "    - Formula: Format its text as LaTeX.\n"
    "    - Table: Format its text as HTML.\n"
    "    - All Others (Text, Title, etc.): Format their text as Markdown.\n"
    "\n"
    "4. Constraints:\n"
    "    - The output text must be the original text from the image, with no translation.\n"
    "    - All layout elements must be sorted according to human reading order.\n"
    "\n"
    "5. Final Output: The entire output must be a single JSON object.\n"
)


@dataclass(frozen=True)
class VlmProfile:
    """How to prompt one family of OCR VLMs and how to read its reply.

    `longest_side` is the page budget in pixels (the engine never sends more than the
    processor's own `max_pixels`); `max_tokens` the generation budget (OCR_VLM_MAX_TOKENS,
    when set, overrides it); `output_format` names the normaliser in `replies`;
    `stop_strings` end generation early where the model emits them; `image_first` tells
    that the model's message puts the image before the text, as most model cards do
    (olmOCR's pipeline puts the text first; mlx-vlm's chat template already orders it,
    the vlm-api engine builds its message by it);
    `system_prompt` is the system message the model card uses, if any;
    `request_fields` are fields an inference server's request needs for this model
    besides the sampling the vlm-api engine always states (DeepSeek-OCR's grounding
    tags are special tokens: vLLM must not skip them).
    """

    name: str
    prompt: str
    longest_side: int = 1288
    max_tokens: int = 4096
    output_format: str = "markdown"
    stop_strings: tuple[str, ...] = ()
    image_first: bool = True
    system_prompt: str = ""
    request_fields: tuple[tuple[str, Any], ...] = ()

    def normalise(self, raw: str, image_size: tuple[int, int] | None = None) -> VlmOutput:
        """The model's raw reply as normalised Markdown, plain text and flags.

        `image_size`: (width, height) of the image sent to the model; formats that give
        boxes in its pixels (dots.ocr) need it to return boxes.
        """
        return normalise(self.output_format, raw, image_size)


PROFILES: Mapping[str, VlmProfile] = MappingProxyType({p.name: p for p in (
    VlmProfile("generic", GENERIC_PROMPT),
    # olmOCR renders pages at 1288 px longest side (olmocr pipeline --target_longest_image_dim)
    # and allows long replies (8000 tokens).
    VlmProfile("olmocr", OLMOCR_PROMPT, longest_side=1288, max_tokens=8000,
               output_format="olmocr_yaml", image_first=False),
    # SmolDocling / granite-docling (Idefics3 processor: 512 px tiles, longest edge 2048).
    VlmProfile("docling", DOCLING_PROMPT, longest_side=2048, max_tokens=8192,
               output_format="doctags", stop_strings=DOCLING_STOP),
    # DeepSeek-OCR "base" mode is 1024x1024; larger pages are tiled by the processor.
    VlmProfile("deepseek-ocr", DEEPSEEK_OCR_PROMPT, longest_side=1280, max_tokens=8192,
               output_format="deepseek_grounding", stop_strings=DEEPSEEK_OCR_STOP,
               request_fields=(("skip_special_tokens", False),)),
    VlmProfile("nanonets", NANONETS_PROMPT, longest_side=1288, max_tokens=8192,
               output_format="nanonets", system_prompt="You are a helpful assistant."),
    VlmProfile("paddleocr-vl", PADDLEOCR_VL_PROMPT, longest_side=1288, max_tokens=4096,
               output_format="paddleocr_vl"),
    VlmProfile("dots-ocr", DOTS_OCR_PROMPT, longest_side=1288, max_tokens=8192,
               output_format="dots_layout_json"),
)})


def profile_names() -> tuple[str, ...]:
    return tuple(PROFILES)


# model_type values (config.json, or as mlx-vlm names its model modules) that fix the
# profile on their own.
_BY_MODEL_TYPE = {
    "deepseekocr": "deepseek-ocr",
    "deepseekocr_2": "deepseek-ocr",
    "paddleocr_vl": "paddleocr-vl",
    "dots_ocr": "dots-ocr",
}
# Architectures (config.json) that fix the profile on their own.
_BY_ARCHITECTURE = {
    "deepseekocrforcausallm": "deepseek-ocr",
    "paddleocrvlforconditionalgeneration": "paddleocr-vl",
    "dotsocrforcausallm": "dots-ocr",
}
# Folder (or `_name_or_path`) name patterns, tried in order: fine-tunes of generic
# architectures (olmOCR and Nanonets are Qwen2.5-VL; the docling models are Idefics3).
_BY_NAME = (
    (re.compile(r"olmocr", re.I), "olmocr"),
    (re.compile(r"smoldocling|granite[-_.]?docling", re.I), "docling"),
    (re.compile(r"deepseek[-_.]?ocr", re.I), "deepseek-ocr"),
    (re.compile(r"nanonets", re.I), "nanonets"),
    (re.compile(r"paddleocr[-_.]?vl", re.I), "paddleocr-vl"),
    (re.compile(r"dots[-_.]?ocr", re.I), "dots-ocr"),
)


def select_profile(model_path: Path, forced: str | None = None,
                   model_name: str = "") -> VlmProfile:
    """The profile of the model in `model_path`, or the `forced` one (OCR_MODEL_PROFILE).

    Order: a forced name (empty means automatic); `config.json` `model_type` or
    `architectures` naming an OCR model; the folder name, the model's configured `model_name`
    (OCR_MODEL: a hub repo id, whose snapshot folder is only a revision hash) or the
    config's `_name_or_path` naming a known fine-tune; else `generic`.
    """
    if forced:
        key = forced.strip().lower()
        if key not in PROFILES:
            raise EngineUnavailable(f"OCR_MODEL_PROFILE={forced!r} is not a model profile; "
                                    f"choose one of {', '.join(PROFILES)} (or leave it "
                                    "empty to choose from the model folder)")
        return PROFILES[key]
    config = _read_config(model_path)
    model_type = str(config.get("model_type", "")).lower()
    if model_type in _BY_MODEL_TYPE:
        return PROFILES[_BY_MODEL_TYPE[model_type]]
    architectures = config.get("architectures")
    if isinstance(architectures, list):
        for arch in architectures:
            name = _BY_ARCHITECTURE.get(str(arch).lower())
            if name:
                return PROFILES[name]
    names = [model_path.name, model_name, str(config.get("_name_or_path", ""))]
    for pattern, name in _BY_NAME:
        if any(pattern.search(n) for n in names):
            return PROFILES[name]
    return PROFILES["generic"]


def _read_config(model_path: Path) -> dict[str, Any]:
    """The folder's config.json as a dict; empty when missing or not a JSON object."""
    try:
        data = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
