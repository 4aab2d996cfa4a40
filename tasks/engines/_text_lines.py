"""A few of a page's text lines as one small image: what `lang=auto`'s line probe reads.

Runs in worker pool children (the tesseract adapter's `detect_script`). Pure PIL and
numpy: the page's dark rows, on a copy reduced 4 times, make runs (text lines); the
`count` lines of about the median height with the most ink are cut from the full page
(their left part) and stacked. Reading them costs a small part of reading the page
(1.5 lines' worth of a 20-30-line page), where tesseract's OSD classifies each
character in 4 orientations against every script (~5 ms a character: 100 of them cost
more than reading a short page).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

REDUCE = 4
INK = 128  # a pixel darker than this (grey 0-255) is ink
# A text line of the probe is at most this many times shorter than its crop is wide.
TALLEST = 4
# A run of rows is a block of lines where its ink a line pitch down falls under this
# share of its most (`_parts`).
PARTING = 0.4


class ProbeLine(NamedTuple):
    """One text line of the probe: its crop (the line's left part) and its top (pixels)."""

    top: int
    image: Image.Image


def probe_crops(image: Image.Image, count: int = 3, width: float = 0.5
                ) -> list[ProbeLine]:
    """The page's `count` inkiest lines of near-median height, inkiest first; [] when none.

    Only the left `width` of each line is taken: more lines for the same reading time
    (3 half lines read more surely than 2 whole ones on the corpus, for less). A probe
    stacks them, or reads the first alone.
    """
    grey = image if image.mode == "L" else image.convert("L")
    small = np.asarray(grey.reduce(REDUCE)) < INK
    rows = small.sum(axis=1)
    dark = np.concatenate(([False], rows > max(1, rows.max() // 20), [False]))
    edges = np.flatnonzero(dark[1:] != dark[:-1])
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    if not runs:
        return []
    heights = sorted(b - a for a, b in runs)
    median = heights[len(heights) // 2]
    if median * REDUCE * TALLEST > grey.width * width:
        # Runs this tall are no text lines: a page turned a quarter, whose lines run down
        # the page (its probe read bands of them, 0.5-3.4 s at 1288 px, all unreadable).
        return []
    lines = [(a, b) for a, b in runs if 0.7 * median <= b - a <= 1.5 * median]
    lines.sort(key=lambda run: -int(rows[run[0]:run[1]].sum()))
    # A margin of a sixth of a line, stopped at the neighbouring lines, so that no
    # cut-off accents or descenders of another line come in (read as noise).
    pad = max(1, median // 6)
    starts = [a for a, _ in runs]
    ends = [b for _, b in runs]
    crops = []
    pitch = _pitch(rows, median)
    for a, b in lines[:count]:
        above = max((end for end in ends if end <= a), default=0)
        below = min((start for start in starts if start >= b), default=len(rows))
        if pitch and b - a > 1.6 * pitch and _parts(rows[a:b], pitch):
            # A block of lines joined by their accents and descenders: its first line.
            b = a + round(1.1 * pitch)
            below = b
        top, bottom = max(above, a - pad), min(below, b + pad)
        crops.append(ProbeLine(top * REDUCE, grey.crop(
            (0, top * REDUCE, round(grey.width * width), min(grey.height, bottom * REDUCE)))))
    return crops


def stack(lines: Sequence[ProbeLine]) -> Image.Image:
    """The lines' crops one under the other, in the order given, as one image."""
    out = Image.new("L", (lines[0].image.width, sum(line.image.height for line in lines)),
                    255)
    top = 0
    for line in lines:
        out.paste(line.image, (0, top))
        top += line.image.height
    return out


def _parts(run: np.ndarray, pitch: int) -> bool:
    """Whether a run of rows parts about a line pitch down: a block of lines, not one.

    Between two lines' cores the ink falls under PARTING of the run's most (the corpus'
    Vietnamese blocks: 0.09-0.32); a single line whose core the pitch's threshold split
    keeps more there (Helvetica at 11-13 pt, 0.48-0.66, whose pitch then came out at a
    fraction of a line and cut its crops through the letters).
    """
    near = run[round(0.8 * pitch):round(1.4 * pitch) + 1]
    return bool(len(near)) and int(near.min()) < PARTING * int(run.max())


def _pitch(rows: np.ndarray, median: int) -> int:
    """The page's line pitch: the median distance between line cores, 0 if unknown.

    A Latin line's core (its x-height band) holds most of its ink: where accents and
    descenders join lines into blocks (Vietnamese stacks two marks over a letter, on a
    page with tight leading), the cores still part them. Han lines have no such band
    (their rows break into pieces at this threshold): a pitch under 0.4 of the runs'
    `median` height is no line pitch.
    """
    core = np.concatenate(([False], rows > max(1, int(rows.max()) // 2), [False]))
    starts = np.flatnonzero(core[1:] & ~core[:-1])
    if len(starts) < 3:
        return 0
    pitch = int(np.median(np.diff(starts)))
    return pitch if pitch >= 0.4 * median else 0


# Unicode name prefixes of a tesseract script's letters, where they differ from the
# script's name in capitals (Latin: LATIN, Greek: GREEK, Cyrillic: CYRILLIC, ...).
_LETTER_NAMES = {"Han": ("CJK",), "Japanese": ("HIRAGANA", "KATAKANA", "CJK"),
                 "Hangul": ("HANGUL",)}


def script_share(text: str, script: str) -> float:
    """The share of `text`'s letters that are `script`'s (by their Unicode names).

    A probe language can read another script's lines with a fair confidence (chi_sim
    reads Latin lines at 70-81 on the corpus) but writes its own script's letters only
    where they are.
    """
    prefixes = _LETTER_NAMES.get(script, (script.upper(),))
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    own = sum(unicodedata.name(ch, "").startswith(prefixes) for ch in letters)
    return own / len(letters)
