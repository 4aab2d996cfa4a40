"""Character error rate against ground truth, whitespace-normalised."""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cer(reference: str, hypothesis: str) -> float:
    """Edit distance / reference length, after collapsing whitespace."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    return Levenshtein.distance(ref, hyp) / max(1, len(ref))
