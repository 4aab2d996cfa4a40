"""What the two VLM engines share: their class set-up, prompt and page/token budget.

`VlmEngine` is the base of the in-process engine (tasks/engines/vlm/mlx_vlm_engine.py) and the
inference-server engine (tasks/engines/vlm/vlm_api_engine.py): Markdown out, tesseract for the
orientation check and a searchable PDF's word boxes, pages sized to the model's budget
(`VlmBudget`: the profile's, overridden by settings), the read itself by
`page_read.read_page` with the engine's own `generate`. Pure (no model library):
runs in worker pool children, and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from tasks.engines.base import OcrEngine, PageResult, RecognizeOptions
from tasks.engines.vlm.budget import PatchGrid, budget_size
from tasks.engines.vlm.page_read import Generate, read_page
from tasks.engines.vlm.profiles import VlmProfile

if TYPE_CHECKING:
    from tasks.settings import Settings


@dataclass(frozen=True)
class VlmBudget:
    """The page and token budget of a VLM engine (its profile, overridden by settings)."""

    longest_side: int
    max_tokens: int
    temperatures: tuple[float, ...]
    grid: PatchGrid

    @classmethod
    def of(cls, settings: Settings, profile: VlmProfile, grid: PatchGrid) -> VlmBudget:
        """OCR_VLM_LONGEST_SIDE and OCR_VLM_MAX_TOKENS when set, else the profile's."""
        return cls(longest_side=settings.vlm_longest_side or profile.longest_side,
                   max_tokens=settings.vlm_max_tokens or profile.max_tokens,
                   temperatures=settings.vlm_temperatures, grid=grid)


def vlm_prompt(settings: Settings, profile: VlmProfile) -> str:
    """The instruction: OCR_PROMPT when changed from the default, else the profile's."""
    from tasks.settings import DEFAULT_PROMPT

    return settings.prompt if settings.prompt != DEFAULT_PROMPT else profile.prompt


class VlmEngine(OcrEngine):
    """Base of the VLM engines: a `profile`, a `budget`, a model name and `generate`."""

    gives_markdown = True
    # Pages are turned upright by tesseract's orientation check before the model reads.
    orientation_engine = "tesseract"
    # No word boxes of its own: a searchable PDF places its words on tesseract's boxes.
    text_layer_from = "tesseract"

    def __init__(self, model_name: str, profile: VlmProfile, budget: VlmBudget) -> None:
        self.model = model_name
        self.profile = profile
        self.budget = budget
        self.page_longest_side = budget.longest_side

    def page_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a `width` x `height` page goes to the model at."""
        return budget_size(width, height, self.budget.longest_side, self.budget.grid)

    def sized(self, image: Image.Image, modes: tuple[str, ...] = ("RGB",)) -> Image.Image:
        """The page at `page_size`, in one of `modes` (RGB otherwise)."""
        size = self.page_size(image.width, image.height)
        page = image if image.mode in modes else image.convert("RGB")
        return page if page.size == size else page.resize(size, Image.Resampling.LANCZOS)

    def read(self, image: Image.Image, options: RecognizeOptions,
             generate: Generate) -> PageResult:
        """Read a sized page through the temperature ladder (`page_read.read_page`)."""
        return read_page(image, options, self.profile, self.budget.temperatures, generate,
                         self.name)
