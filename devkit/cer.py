"""Character error rate against ground truth: the service's metric (tasks/evaluation/scoring.py)."""

from __future__ import annotations

from tasks.evaluation.scoring import normalize, score

__all__ = ["cer", "normalize"]


def cer(reference: str, hypothesis: str) -> float:
    """Edit distance / reference length, after NFC and collapsing whitespace."""
    return score(reference, hypothesis).cer
