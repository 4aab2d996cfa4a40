"""Fake engines for queue-mechanics tests, loaded by real workers as plugins.

They are fakes: their text only describes the image.
"""

from __future__ import annotations

import os
import signal
import time

from PIL import Image, ImageStat

from tasks.engines import OcrEngine, PageResult, RecognizeOptions
from tasks.engines.vlm.vlm_api_engine import VlmApiEngine
from tasks.errors import EngineFailed, EngineUnavailable
from tasks.settings import Settings


class FakeEngine(OcrEngine):
    """Answers `fake WxH mean=M` for each page; `FAKE_PAGE_SECONDS` slows it down.

    `FAKE_TEXT_BYTES`: each page's text is padded with lines of words to that size
    (a big result made cheaply).
    """

    name = "fake"

    def __init__(self, delay: float, padded: int = 0) -> None:
        self.delay = delay
        self.padded = padded
        self.model = "fake-1"

    @classmethod
    def load(cls, settings: Settings) -> FakeEngine:
        return cls(float(os.environ.get("FAKE_PAGE_SECONDS", "0")),
                   int(os.environ.get("FAKE_TEXT_BYTES", "0")))

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        time.sleep(self.delay)
        mean = ImageStat.Stat(image.convert("L")).mean[0]
        text = f"fake {image.width}x{image.height} mean={mean:.1f}"
        line = "\nlorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"
        text += line * (max(0, self.padded - len(text)) // len(line))
        return PageResult(text=text, confidence=100.0)


class BrokenEngine(FakeEngine):
    """Fails to load the way a library does: with an exception of its own."""

    name = "broken"

    @classmethod
    def load(cls, settings: Settings) -> BrokenEngine:
        raise RuntimeError("the fake model file is damaged")


class FakeModelEngine(FakeEngine):
    """Loads a folder of OCR_MODEL_DIR the way the VLM engine does (config.json only).

    Its model-directory entry is registered as loaded, like a real VLM's, so lifecycle
    tests need no MLX.
    """

    name = "fake-model"

    def __init__(self, delay: float, model: str) -> None:
        super().__init__(delay)
        self.model = model

    @classmethod
    def model_entry(cls, settings: Settings) -> str | None:
        return settings.model or None

    @classmethod
    def load(cls, settings: Settings) -> FakeModelEngine:
        from tasks.models.locate import configured_model

        path = configured_model(settings)
        if path is None or not (path / "config.json").is_file():
            raise EngineUnavailable(f"no model folder {settings.model!r}")
        return cls(float(os.environ.get("FAKE_PAGE_SECONDS", "0")), settings.model)


def _is_dark(image: Image.Image) -> bool:
    return ImageStat.Stat(image.convert("L")).mean[0] < 64


class SlowOnDarkEngine(FakeEngine):
    """Sleeps (interruptibly) on dark pages, so the page's soft time limit fires."""

    name = "slow-on-dark"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        if _is_dark(image):
            time.sleep(60)
        return super().recognize(image, options)


class StuckOnDarkEngine(FakeEngine):
    """Hangs on dark pages like native code that never returns.

    The soft time limit's signal is blocked, so only the hard limit (which kills the
    child) ends the page.
    """

    name = "stuck-on-dark"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        if _is_dark(image):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            time.sleep(60)
        return super().recognize(image, options)


class KillerEngine(FakeEngine):
    """Kills its own process on dark pages, like the OOM killer would: a poison job."""

    name = "killer"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        if _is_dark(image):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().recognize(image, options)


class FlakyOnDarkEngine(FakeEngine):
    """Fails on dark pages until the file named by FAKE_HEALED_FLAG exists."""

    name = "flaky-on-dark"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        healed = os.environ.get("FAKE_HEALED_FLAG", "")
        if _is_dark(image) and not (healed and os.path.exists(healed)):
            raise EngineFailed("the fake engine fails on dark pages until healed")
        return super().recognize(image, options)


class TransientOnDarkEngine(FakeEngine):
    """A retryable failure (`transient`) on dark pages until FAKE_HEALED_FLAG exists."""

    name = "transient-on-dark"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        from tasks.errors import TransientError

        healed = os.environ.get("FAKE_HEALED_FLAG", "")
        if _is_dark(image) and not (healed and os.path.exists(healed)):
            raise TransientError("the fake engine's service is away until healed")
        return super().recognize(image, options)


class PeakMemoryEngine(FakeEngine):
    """The fake's text plus ` peak_mb=N`: this child's peak RSS so far (decode included)."""

    name = "peak-memory"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        import resource

        result = super().recognize(image, options)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return PageResult(text=f"{result.text} peak_mb={peak:.0f}", confidence=100.0)


class RaisingOnDarkEngine(FakeEngine):
    """Raises an exception of its own on dark pages, like a bug in an adapter."""

    name = "raising-on-dark"

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        if _is_dark(image):
            raise ValueError("a bug in the fake engine")
        return super().recognize(image, options)


class MarkdownModelEngine(FakeEngine):
    """Writes each page as Markdown, like a vision-language model: a complete read."""

    name = "fake-markdown"
    gives_markdown = True
    MARKDOWN = "# The model's heading\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nIts *own* words."

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        from tasks.records.results import VlmRead

        return PageResult(text=self.MARKDOWN, vlm=VlmRead("generic", image.size, 10, 20,
                                                          "stop", 1))


class LayoutBreakingEngine(FakeEngine):
    """Makes PyMuPDF's layout analysis fail on pages holding `BREAK-LAYOUT`.

    In its process, a fault is injected into the library's own call (`Page.get_layout`),
    as a page the analysis cannot handle would raise there.
    """

    name = "layout-breaking"

    @classmethod
    def load(cls, settings: Settings) -> LayoutBreakingEngine:
        import pymupdf

        analyse = pymupdf.Page.get_layout

        def get_layout(page: pymupdf.Page, *args: object, **kwargs: object) -> object:
            if "BREAK-LAYOUT" in page.get_text():
                raise RuntimeError("injected layout fault")
            return analyse(page, *args, **kwargs)

        pymupdf.Page.get_layout = get_layout  # type: ignore[method-assign, assignment]
        return cls(0.0)


class LayoutKillingEngine(FakeEngine):
    """Kills its own process in PyMuPDF's layout analysis of a page holding `KILL-LAYOUT`.

    Like the OOM killer meeting a page the analysis cannot handle: the structure chunk
    task holding that page is lost, again at each redelivery, until the poison guard
    refuses it (tests/queue/test_worker_edges.py: a lost structure chunk).
    """

    name = "layout-killing"

    @classmethod
    def load(cls, settings: Settings) -> LayoutKillingEngine:
        import pymupdf

        analyse = pymupdf.Page.get_layout

        def get_layout(page: pymupdf.Page, *args: object, **kwargs: object) -> object:
            if "KILL-LAYOUT" in page.get_text():
                os.kill(os.getpid(), signal.SIGKILL)
            return analyse(page, *args, **kwargs)

        pymupdf.Page.get_layout = get_layout  # type: ignore[method-assign, assignment]
        return cls(0.0)


class LeakyEngine(FakeEngine):
    """Keeps 4 MB of every page it reads: a process that grows (recycling by memory).

    Registered under the name `vlm-api` (OCR_ENGINE_PLUGINS wins over the built-ins),
    it runs in a thread-pool worker as the vlm-api engine does, with no server behind:
    its pool traits are that engine's.
    """

    name = "leaky"
    thread_safe = True
    kept: list[bytes] = []
    # the pool traits of the engine it stands in for
    pool_kind = VlmApiEngine.pool_kind
    concurrency = VlmApiEngine.concurrency
    page_time_limit = VlmApiEngine.page_time_limit

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        LeakyEngine.kept.append(b"\x01" * (4 << 20))  # touched: resident memory
        return super().recognize(image, options)
