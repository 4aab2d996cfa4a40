"""The usage page's bar chart: bars laid out on the server, drawn by the template's SVG.

Runs in the `api` process. Pure arithmetic: the template turns each `Bar` into an SVG
rectangle and its label, so the chart needs no script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220  # the chart's drawing area, in SVG units
BOTTOM = 30  # room under the bars for the day labels


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    most: int  # the tallest bar's value: the scale
    baseline: float


def bars(values: Sequence[tuple[str, int]]) -> Chart:
    """One bar per (label, value), scaled so the largest value fills the height."""
    most = max((value for _, value in values), default=0)
    room = HEIGHT - BOTTOM
    step = WIDTH / max(1, len(values))
    shown = [Bar(label, value, round(i * step + step * 0.1, 2),
                 round(room - (room * value / most if most else 0), 2),
                 round(step * 0.8, 2), round(room * value / most if most else 0, 2))
             for i, (label, value) in enumerate(values)]
    return Chart(shown, WIDTH, HEIGHT, most, room)
