"""The engine contract: one small interface every OCR engine adapter implements.

Engines are constructed in a worker pool child (never in the parent) by
`tasks.engines.resident.ResidentEngines` and reused for every task that child runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from PIL import Image

    from worker_config import Settings


@dataclass(frozen=True)
class Word:
    """One recognised word with its box in page pixels (x0, y0, x1, y1)."""

    text: str
    box: tuple[int, int, int, int]
    confidence: float


@dataclass(frozen=True)
class PageResult:
    """What an engine returns for one page image."""

    text: str
    words: tuple[Word, ...] = ()
    confidence: float | None = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecognizeOptions:
    """Per-job options an engine may honour."""

    output: str = "text"
    want_words: bool = False


class OcrEngine(ABC):
    """Base class of engine adapters. Subclasses set the class attributes below."""

    name: ClassVar[str]
    gives_words: ClassVar[bool] = False
    gives_markdown: ClassVar[bool] = False

    model: str | None = None

    @classmethod
    def model_entry(cls, settings: Settings) -> str | None:
        """The OCR_MODEL_DIR entry this engine loads, or None when it uses none.

        Workers register that entry in Redis as loaded while the engine is, so that the
        model-directory audit never prunes it.
        """
        return None

    @classmethod
    @abstractmethod
    def load(cls, settings: Settings) -> OcrEngine:
        """Load the engine (model, library handles) in the calling process."""

    @abstractmethod
    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        """Recognise the text of one page image (mode L or RGB)."""

    def detect_orientation(self, image: Image.Image) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) that put the page upright.

        Engines that cannot tell return 0 and leave the page as it is.
        """
        return 0

    def release_cache(self) -> dict[str, float]:
        """Free per-task caches; called after every task. Returns memory figures."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free everything the engine holds; it is not used afterwards."""
