"""Page image clean-up before recognition: right-side up and deskewed.

Runs in worker children. Orientation comes from the engine when it can tell
(`OcrEngine.detect_orientation`); skew is measured here from the image alone, by the
angle whose horizontal projection profile is sharpest (text lines give peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_PROBE_WIDTH = 800


@dataclass(frozen=True)
class Correction:
    """What was done to a page image: counter-clockwise degrees, 90° steps then skew."""

    rotation: int = 0
    skew: float = 0.0

    def apply(self, image: Image.Image) -> Image.Image:
        if self.rotation:
            image = image.rotate(self.rotation, expand=True)
        if self.skew:
            fill = 255 if image.mode == "L" else (255, 255, 255)
            image = image.rotate(self.skew, resample=Image.Resampling.BICUBIC,
                                 expand=True, fillcolor=fill)
        return image


def estimate_skew(image: Image.Image, max_angle: float = 10.0) -> float:
    """Counter-clockwise degrees that make the text lines horizontal (0.0 if unsure)."""
    gray = image.convert("L")
    scale = min(1.0, _PROBE_WIDTH / gray.width)
    probe = gray.resize((max(1, int(gray.width * scale)), max(1, int(gray.height * scale))))
    ink = Image.fromarray(((np.asarray(probe) < 128) * 255).astype(np.uint8), "L")
    if np.count_nonzero(np.asarray(ink)) < 100:
        return 0.0

    def sharpness(angle: float) -> float:
        rows = np.asarray(ink.rotate(angle, expand=False), dtype=np.float64).sum(axis=1)
        return float(np.sum(np.diff(rows) ** 2))

    coarse = np.arange(-max_angle, max_angle + 0.01, 0.5)
    scores = [sharpness(a) for a in coarse]
    best = float(coarse[int(np.argmax(scores))])
    fine = np.arange(best - 0.5, best + 0.51, 0.1)
    best = float(fine[int(np.argmax([sharpness(a) for a in fine]))])
    baseline = sharpness(0.0)
    # Keep the page as it is unless a rotation is clearly better.
    return round(best, 2) if abs(best) >= 0.2 and sharpness(best) > baseline * 1.05 else 0.0
