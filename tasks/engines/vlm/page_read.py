"""One page read by a vision-language model, whatever runs the model.

The engine-independent part of a VLM read, shared by the in-process engine
(`mlx_vlm_engine.py`) and the inference-server engine (`vlm_api_engine.py`): each
engine gives a `generate(image, temperature) -> Generation` of its own, and
`read_page` runs the temperature ladder (a read that ends at the token limit or in a
loop is tried again at the next temperature), olmOCR's re-ask of a sideways page, the
profile's normaliser, and builds the page's `vlm` record. A read that is still
incomplete comes back with no text: the pipeline falls back or fails the page.

Pure (no model library): runs in worker pool children, and in tests with a stub
`generate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from tasks.engines.base import PageResult, RecognizeOptions
from tasks.engines.vlm.profiles import VlmProfile
from tasks.records.results import VlmRead

log = logging.getLogger(__name__)
# Characters of generated text kept to look for the profile's stop strings.
STOP_TAIL = 256


@dataclass(frozen=True)
class Generation:
    """One generate call on one page."""

    text: str
    prompt_tokens: int
    generation_tokens: int
    finish_reason: str  # stop | length | repetition | error


Generate = Callable[[Image.Image, float], Generation]


class StopWatch:
    """Finds the profile's stop strings in streamed text (they end a read early)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.fired = False
        self._tail = ""

    def feed(self, text: str) -> bool:
        """Add streamed text; True once a stop string has been generated."""
        if not self.stops:
            return False
        self._tail = (self._tail + text)[-STOP_TAIL:]
        self.fired = self.fired or any(stop in self._tail for stop in self.stops)
        return self.fired

    def cut(self, text: str) -> str:
        """The generated text before the first stop string."""
        for stop in self.stops:
            text = text.split(stop, 1)[0]
        return text


def read_page(sized: Image.Image, options: RecognizeOptions, profile: VlmProfile,
              temperatures: tuple[float, ...], generate: Generate,
              engine: str) -> PageResult:
    """Read one page image, already at the model's page budget, with `generate`."""
    size = sized.size
    generation = Generation("", 0, 0, "error")
    tries = 0
    for temperature in temperatures:
        tries += 1
        generation = generate(sized, temperature)
        if generation.finish_reason in ("stop", "error"):
            break  # an error is not retried: the same input fails the same way
        log.info("%s: page read ended with %s at temperature %s (try %d)", engine,
                 generation.finish_reason, temperature, tries)
    vlm = _record(profile, size, generation, tries)
    if not vlm.complete:
        return PageResult(text="", vlm=vlm)  # never a truncated text as a clean read
    output = profile.normalise(generation.text, size)
    if output.flags.get("is_rotation_valid") is False and output.rotation:
        # olmOCR read a sideways page and says how to turn it: turn it, ask again (as
        # olmOCR's own pipeline does); kept only when that read is complete.
        turned = sized.rotate(output.rotation, expand=True)
        again = generate(turned, temperatures[0])
        tries += 1
        if again.finish_reason == "stop":
            generation, size = again, turned.size
            output = profile.normalise(again.text, size)
        vlm = _record(profile, size, generation, tries)
    text = output.markdown if options.output == "markdown" else output.text
    return PageResult(text=text.strip(), vlm=vlm)


def _record(profile: VlmProfile, size: tuple[int, int], generation: Generation,
            tries: int) -> VlmRead:
    return VlmRead(profile=profile.name, image_size=size,
                   prompt_tokens=generation.prompt_tokens,
                   generation_tokens=generation.generation_tokens,
                   finish_reason=generation.finish_reason, tries=tries)
