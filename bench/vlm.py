"""VLM runtime: the page budget and the repetition guard, measured.

The model is random-weight with Qwen2-VL's real image geometry (14 px patches merged
2x2, `max_pixels` 12,845,056 as Qwen ships it), built offline by `devkit/tiny_vlm.py`
(geometry `qwen2-vl-pages`); its networks are tiny, so the figures show how the number
of image tokens drives the cost, not a real 2B model's speed (a real model's prefill
per token is far larger; the ratio only grows with it).

1. Page budget: a 300-dpi Letter scan (scan_linn.png, 2550 x 3300 px) read with the
   budget (the profile's 1,288 px longest side) and without (the image as the
   processor takes it, which is what `main` sent): prompt tokens and seconds per page
   (one generated token, so the time is the page's prefill). Also the time to render a
   Letter PDF page at 300 dpi vs directly at the budget.
   Goals: >= 5x fewer prompt tokens, >= 4x faster.
2. Loops: the same model at temperature 0 falls into a loop; generation with the
   repetition guard vs without it (running to the profile's 4,096-token budget).

`--quick` uses a 448 vs 896 px budget and a 512-token limit: a smoke test of the
mechanics, its ratios are not the goals'.

MLX runs only in a subprocess of its own (`python -m bench.vlm probe ...`): the bench
process forks workers for other benchmarks, and MLX evaluated before a fork deadlocks
the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import MLX_ENV, BenchError, Context, Ratio, Report, Table, build_tiny_model
from devkit.corpus import CORPUS
from devkit.harness import ROOT

MODEL = "qwen2-vl-pages"
PAGE = "scan_linn.png"
PDF = "scan_linn_skew.pdf"


def run(ctx: Context) -> Report:
    report = Report("vlm")
    models = ctx.workdir / "models"
    build_tiny_model(models, MODEL)
    sides = (448, 896) if ctx.quick else (1288, None)
    max_tokens = 512 if ctx.quick else 4096
    done = subprocess.run(
        [sys.executable, "-m", "bench.vlm", "probe", str(models), json.dumps(
            {"sides": sides, "max_tokens": max_tokens})],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
        env={**os.environ, **MLX_ENV, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise BenchError(f"the VLM probe failed:\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    report.data = data

    budget, full = data["pages"]
    label = "quick: 448 vs 896 px" if ctx.quick else "300 dpi, 2550 x 3300 px"
    pages = Table(f"Letter scan {PAGE} ({label}), one page, prefill + 1 token",
                  ["page sent as", "image size", "prompt tokens", "seconds"])
    for row in (budget, full):
        pages.rows.append([row["label"], "x".join(map(str, row["image_size"])),
                           row["prompt_tokens"], row["seconds"]])
    render = Table(f"rendering the Letter PDF page {PDF}", ["rendered at", "size", "seconds"])
    for row in data["render"]:
        render.rows.append([row["label"], "x".join(map(str, row["size"])), row["seconds"]])
    loops = Table(f"a looping page (temperature 0, budget {sides[0]} px): prefill + "
                  "generation until the guard or the token limit stops it",
                  ["guard", "finish_reason", "generated tokens", "seconds"])
    for row in data["loops"]:
        loops.rows.append([row["label"], row["finish_reason"], row["generation_tokens"],
                           row["seconds"]])
    report.tables += [pages, render, loops]

    token_ratio = full["prompt_tokens"] / budget["prompt_tokens"]
    speed_ratio = full["seconds"] / budget["seconds"]
    guarded, unguarded = data["loops"]
    loop_ratio = unguarded["seconds"] / guarded["seconds"]
    goals = not ctx.quick
    report.ratios += [
        Ratio("prompt tokens: no budget / budget", token_ratio, ">= 5" if goals else "",
              token_ratio >= 5 if goals else None),
        Ratio("seconds per page: no budget / budget", speed_ratio, ">= 4" if goals else "",
              speed_ratio >= 4 if goals else None),
        Ratio("loop: seconds to the token limit / to detection", loop_ratio),
    ]
    report.notes.append("random-weight model with Qwen2-VL's image geometry and tiny "
                        "networks; CPU only; seconds depend on the machine's load")
    return report


def probe(models: Path, options: dict[str, Any]) -> dict[str, Any]:
    """In a process of its own: load the model, measure, return the figures."""
    import pymupdf
    from PIL import Image

    from tasks.engines.base import RecognizeOptions
    from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine, VlmBudget
    from tasks.pipeline.pdf import render_page
    from tasks.settings import Settings

    settings = Settings.from_env({"OCR_MODEL_DIR": str(models), "OCR_MODEL": MODEL,
                                  "OCR_VLM_TEMPERATURES": "0"})
    engine = MlxVlmEngine.load(settings)
    grid = engine.budget.grid
    image = Image.open(CORPUS / PAGE).convert("RGB")
    warm = engine.page_size(image.width, image.height)
    engine.generate(image.resize((warm[0] // 4, warm[1] // 4)), 0.0)  # warm-up

    pages = []
    for side in options["sides"]:
        longest = side or max(image.size)
        engine.budget = VlmBudget(longest, 1, (0.0,), grid)
        started = time.perf_counter()
        read = engine.recognize(image, RecognizeOptions())
        seconds = time.perf_counter() - started
        assert read.vlm is not None
        pages.append({"label": f"budget {side} px" if side else "no budget (main)",
                      "image_size": list(read.vlm.image_size),
                      "prompt_tokens": read.vlm.prompt_tokens,
                      "seconds": round(seconds, 2)})

    render = []
    with pymupdf.open(CORPUS / PDF) as doc:
        budget_side = options["sides"][0]
        for label, side in (("300 dpi", None), (f"budget {budget_side} px", budget_side)):
            started = time.perf_counter()
            rendered = render_page(doc, 1, settings, side)
            render.append({"label": label, "size": list(rendered.size),
                           "seconds": round(time.perf_counter() - started, 3)})

    side = options["sides"][0]
    engine.budget = VlmBudget(side, options["max_tokens"], (0.0,), grid)
    sized = image.resize(engine.page_size(image.width, image.height))
    loops = []
    for label, guard in (("repetition guard", True), ("none", False)):
        started = time.perf_counter()
        generation = engine.generate(sized, 0.0, loop_guard=guard)
        loops.append({"label": label, "finish_reason": generation.finish_reason,
                      "generation_tokens": generation.generation_tokens,
                      "seconds": round(time.perf_counter() - started, 2)})
    engine.close()
    return {"pages": pages, "render": render, "loops": loops,
            "max_tokens": options["max_tokens"], "geometry": {
                "patch_px": 14, "merge": 2, "max_pixels": grid.max_pixels}}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "probe":
        sys.exit("usage: python -m bench.vlm probe MODELS_DIR OPTIONS_JSON")
    print(json.dumps(probe(Path(sys.argv[2]), json.loads(sys.argv[3]))))
