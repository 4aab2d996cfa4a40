"""Memory: worker RSS and MLX memory, RSS over a 1,000-page PDF, cost of recycling.

1. The tiny random-weight VLM of the tests (`devkit/tiny_vlm.py`, built offline here) in
   one pool child that is never recycled, 500 tasks, with the `task_postrun` cache clear
   (OCR_MLX_CLEAR_CACHE=1, the default) and without (0). RSS of the child is sampled
   after every batch; MLX active/peak/cache memory is what the engine's
   `release_cache()` read after each task (the worker logs it at DEBUG). The tiny model
   is ~1 MB: this shows the mechanics and leaks of the task loop, not a real model's
   footprint (a 2B model takes 2-3 GB).
2. A 1,000-page PDF made here with PyMuPDF (small pages, one line of text each), one job
   read from its text layer (mode=text) and one OCRed (mode=ocr), RSS of every worker
   process sampled every 0.2 s. Written to a temporary folder, never committed.
3. The tiny VLM again with OCR_MAX_TASKS_PER_CHILD 1, 5 and 0 (never): tasks/s, and the
   cost of one recycle read from the difference; the worker log splits it into the
   engine load in the new child (MLX import + model load) and the pool's gap between
   the old child's exit and the new child's start. The curve extrapolates the cost to
   other values (default 200).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    Context,
    Ratio,
    Report,
    RssSampler,
    Services,
    Table,
    load_doc,
    new_figure,
    pooled_cer,
    rss_mb,
    run_jobs,
    worker_processes,
)
from devkit.harness import ROOT, Worker
from tasks.settings import Settings

MODEL = "tiny-qwen2-vl"
VLM_ENV = {"OCR_ENGINE": "mlx-vlm", "OCR_MODEL": MODEL, "OCR_CONCURRENCY": "1",
           "OCR_VLM_MAX_TOKENS": "8", "MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"}
MEMORY_LINE = re.compile(r"memory after task \(pid (\d+)\): (\{.*\})")
LOG_TIME = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):"
UNLOADED = re.compile(LOG_TIME + r".*engine unloaded: ", re.M)
LOADED = re.compile(LOG_TIME + r".*engine loaded: \S+ model=\S+ in ([\d.]+)s", re.M)
PAGE_LINE = "Page {n} of {total}: the quick brown fox jumps."


def run(ctx: Context) -> Report:
    report = Report("memory")
    model_dir = build_tiny_vlm(ctx.workdir / "models")
    image = load_doc("scan_tess_phototest.tif").data
    with Services(ctx.workdir) as services:
        cache = vlm_cache(ctx, services, model_dir, image)
        pdf = big_pdf(ctx, services)
        recycle = recycling(ctx, services, model_dir, image)

    table = Table(f"Tiny VLM, {cache['tasks']} tasks in one child (never recycled)",
                  ["cache clear", "tasks/s", "RSS start MB", "RSS end MB", "RSS max MB",
                   "MB per 100 tasks", "MLX active MB", "MLX cache MB (max)",
                   "MLX peak MB (max)"])
    for name, run_ in cache["runs"].items():
        if run_.get("skipped"):
            table.rows.append([name, run_["skipped"]] + [""] * 7)
            continue
        table.rows.append([name, run_["tasks_per_s"], run_["rss_start_mb"],
                           run_["rss_end_mb"], run_["rss_max_mb"], run_["rss_mb_per_100"],
                           run_["mlx_active_mb_last"], run_["mlx_cache_mb_max"],
                           run_["mlx_peak_mb_max"]])
    report.tables.append(table)

    table = Table(f"One {pdf['pages']}-page PDF, one job, worker with 2 children",
                  ["mode", "seconds", "pages/s", "busiest child: RSS before MB",
                   "peak MB", "growth MB", "sum of RSS, all worker processes, peak MB",
                   "CER"])
    for mode, run_ in pdf["runs"].items():
        table.rows.append([mode, run_["seconds"], run_["pages_per_s"], run_["rss_before_mb"],
                           run_["rss_peak_mb"], run_["rss_growth_mb"],
                           run_["total_peak_mb"], f"{run_['cer']:.2%}"])
    report.tables.append(table)

    table = Table(f"Tiny VLM, {recycle['tasks']} tasks: max_tasks_per_child",
                  ["max_tasks_per_child", "seconds", "tasks/s", "engine loads",
                   "load s (mean)", "exit-to-new-child s (mean)", "x never"])
    for label, run_ in recycle["runs"].items():
        table.rows.append([label, run_["seconds"], run_["tasks_per_s"], run_["loads"],
                           run_["load_seconds_mean"], run_["gap_seconds_mean"],
                           run_["vs_never"]])
    report.tables.append(table)
    report.notes.append(
        f"one recycle costs {recycle['recycle_seconds']:.2f} s against "
        f"{1000 * recycle['task_seconds']:.0f} ms per tiny-VLM task; at the default 200 "
        f"tasks per child that is {100 * recycle['loss_at_200']:.1f} % of throughput "
        "(modelled); with a real model's seconds per page it is far less")
    report.notes.append("MLX figures are those of the tiny model on MLX's CPU backend, "
                        "near zero by construction; a real model's cache is what the clear "
                        "is for")

    # No memory goals: these are the headline figures, not verdicts.
    for label, run_ in cache["runs"].items():
        if run_.get("skipped"):
            report.notes.append(f"VLM without cache clear not measured: {run_['skipped']}")
            continue
        report.ratios.append(Ratio(
            f"tiny VLM, clear {label}: child RSS growth, MB per 100 tasks (second half)",
            run_["rss_mb_per_100"],
            note=f"MLX cache max {run_['mlx_cache_mb_max'] or 0:.2f} MB, active "
                 f"{run_['mlx_active_mb_last'] or 0:.2f} MB"))
    report.ratios.append(Ratio(
        f"{pdf['pages']}-page PDF, mode=ocr: busiest child's RSS growth, MB",
        pdf["runs"]["ocr"]["rss_growth_mb"]))
    report.ratios.append(Ratio(
        "tiny VLM throughput, max_tasks_per_child=1 / never", recycle["runs"]["1"]["vs_never"]))
    report.ratios.append(Ratio(
        "tiny VLM throughput lost at max_tasks_per_child=200 (modelled), %",
        100 * recycle["loss_at_200"]))
    report.data = {"vlm_cache": cache, "pdf": pdf, "recycling": recycle}
    report.figure = plot(cache, pdf, recycle)
    return report


def build_tiny_vlm(models: Path) -> Path:
    """The tests' tiny qwen2_vl model, built in a subprocess (MLX never runs here).

    The `tiny-stops` variant ends every read at once: a complete read, so each task is
    the VLM alone (a read cut at the token limit would also run the tesseract fallback).
    """
    env = {**os.environ, "MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(models / MODEL),
                    "tiny-stops"], cwd=ROOT,
                   env=env, check=True, capture_output=True, timeout=300)
    return models


def clear_setting_supported() -> bool:
    return any(f.metadata["setting"].env == "OCR_MLX_CLEAR_CACHE" for f in fields(Settings))


def child_rss(worker: Worker) -> float:
    """RSS of the pool children together (one child here)."""
    return sum(rss_mb(p) or 0.0 for p in worker_processes(worker)[1:])


def parse_memory_log(log: str) -> list[dict[str, float]]:
    return [ast.literal_eval(m.group(2)) for m in MEMORY_LINE.finditer(log)]


def vlm_cache(ctx: Context, services: Services, model_dir: Path,
              image: bytes) -> dict[str, Any]:
    tasks, batch = ctx.size(500, 20), ctx.size(25, 5)
    runs: dict[str, dict[str, Any]] = {}
    for label, clear in (("on (default)", "1"), ("off", "0")):
        if clear == "0" and not clear_setting_supported():
            runs[label] = {"skipped": "no OCR_MLX_CLEAR_CACHE setting in tasks/settings"}
            continue
        env = {**VLM_ENV, "OCR_MODEL_DIR": str(model_dir), "OCR_MLX_CLEAR_CACHE": clear,
               "OCR_MAX_TASKS_PER_CHILD": "0", "LOG_LEVEL": "DEBUG"}
        with services.stack(**env) as (worker, client):
            points = [(0, child_rss(worker))]
            seconds = 0.0
            for done in range(batch, tasks + 1, batch):
                took, _ = run_jobs(client, [(image, {"filename": "phototest.tif"})] * batch,
                                   poll=0.005)
                seconds += took
                points.append((done, child_rss(worker)))
            memory = parse_memory_log(worker.log())
        rss = [mb for _, mb in points]
        tail = points[len(points) // 2:]
        runs[label] = {
            "tasks_per_s": tasks / seconds, "rss_points": points,
            "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_max_mb": max(rss),
            "rss_growth_mb": rss[-1] - rss[0],
            # Slope over the second half: steady-state growth, after warm-up allocations.
            "rss_mb_per_100": 100 * slope(tail),
            "mlx": memory,
            "mlx_active_mb_last": memory[-1]["mlx_active_mb"] if memory else None,
            "mlx_cache_mb_max": max((m["mlx_cache_mb"] for m in memory), default=None),
            "mlx_peak_mb_max": max((m["mlx_peak_mb"] for m in memory), default=None),
        }
    return {"tasks": tasks, "batch": batch, "runs": runs}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def make_pdf(pages: int) -> tuple[bytes, str]:
    """A PDF of `pages` small pages (4 x 1 inch), one line of text each; and its text."""
    import pymupdf

    doc = pymupdf.open()
    lines = []
    for n in range(1, pages + 1):
        line = PAGE_LINE.format(n=n, total=pages)
        page = doc.new_page(width=288, height=72)
        page.insert_text((6, 40), line, fontsize=10)
        lines.append(line)
    data = doc.tobytes(garbage=1, deflate=True)
    doc.close()
    return data, "\f".join(lines)


def big_pdf(ctx: Context, services: Services) -> dict[str, Any]:
    pages = ctx.size(1000, 60)
    data, truth = make_pdf(pages)
    runs: dict[str, dict[str, Any]] = {}
    with services.stack(OCR_CONCURRENCY="2") as (worker, client):
        for mode in ("text", "ocr"):
            with RssSampler(worker, interval=0.2) as sampler:
                seconds, (result,) = run_jobs(client, [(data, {"filename": "big.pdf",
                                                               "mode": mode})], timeout=1800)
            by_pid: dict[int, list[tuple[float, float]]] = {}
            totals: dict[float, float] = {}
            for t, pid, mb in sampler.samples:
                by_pid.setdefault(pid, []).append((t, mb))
                totals[t] = totals.get(t, 0.0) + mb
            # The busiest process: the one whose RSS grew most (the child that read the
            # pages, or with page fan-out the child that grew most).
            series = max(by_pid.values(), key=lambda s: max(mb for _, mb in s) - s[0][1])
            runs[mode] = {
                "seconds": seconds, "pages_per_s": pages / seconds,
                "rss_before_mb": series[0][1], "rss_peak_mb": max(mb for _, mb in series),
                "rss_growth_mb": max(mb for _, mb in series) - series[0][1],
                "total_peak_mb": max(totals.values()),
                "cer": pooled_cer([(truth, result["text"])]),
                "busy_series": series, "samples": len(sampler.samples),
            }
    return {"pages": pages, "pdf_bytes": len(data), "runs": runs}


def recycling(ctx: Context, services: Services, model_dir: Path,
              image: bytes) -> dict[str, Any]:
    tasks = ctx.size(15, 6)  # at limit 1 each task pays a recycle of ~3 s
    runs: dict[str, dict[str, Any]] = {}
    for limit in ((1, 5, 0) if not ctx.quick else (1, 0)):
        env = {**VLM_ENV, "OCR_MODEL_DIR": str(model_dir),
               "OCR_MAX_TASKS_PER_CHILD": str(limit)}
        with services.stack(**env) as (worker, client):
            seconds, results = run_jobs(client, [(image, {"filename": "p.tif"})] * tasks,
                                        poll=0.005)
            log = worker.log()
        per_child = {r["engine"]["pid"]: r["engine"]["load_seconds"] for r in results
                     if r["engine"].get("load_seconds") is not None}
        gaps = replacement_gaps(log)
        runs[str(limit) if limit else "never"] = {
            "limit": limit, "seconds": seconds, "tasks_per_s": tasks / seconds,
            "loads": len(LOADED.findall(log)), "children": len(per_child),
            "load_seconds_mean": sum(per_child.values()) / max(1, len(per_child)),
            "gap_seconds": gaps, "gap_seconds_mean": sum(gaps) / len(gaps) if gaps else None}
    never = runs["never"]
    for run_ in runs.values():
        run_["vs_never"] = run_["tasks_per_s"] / never["tasks_per_s"]
    task_seconds = never["seconds"] / tasks
    # Every task of the limit-1 run but the first needed a new child.
    recycle_seconds = max(0.0, (runs["1"]["seconds"] - never["seconds"]) / max(1, tasks - 1))
    return {"tasks": tasks, "runs": runs, "task_seconds": task_seconds,
            "recycle_seconds": recycle_seconds,
            "loss_at_200": 1 - modelled(200, task_seconds, recycle_seconds) * task_seconds}


def replacement_gaps(log: str) -> list[float]:
    """Seconds from each child's engine unload (its exit) to its successor's start."""
    def when(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    exits = [when(m.group(1)) for m in UNLOADED.finditer(log)]
    starts = [when(m.group(1)) - float(m.group(2)) for m in LOADED.finditer(log)]
    # The first child starts with the worker; each later one follows one exit.
    return [round(start - end, 3) for end, start in zip(exits, starts[1:], strict=False)]


def modelled(limit: float, task_seconds: float, recycle_seconds: float) -> float:
    """Tasks/s when every `limit` tasks pay one recycle."""
    return 1 / (task_seconds + recycle_seconds / limit)


def plot(cache: dict[str, Any], pdf: dict[str, Any], recycle: dict[str, Any]) -> Any:
    fig, axes = new_figure(ncols=3, width=5.2, height=4.2)
    ax = axes[0][0]
    for label, run_ in cache["runs"].items():
        if run_.get("skipped"):
            continue
        xs, ys = zip(*run_["rss_points"], strict=True)
        ax.plot(xs, ys, marker=".", label=f"RSS, clear {label}")
    ax.set_xlabel("tasks")
    ax.set_ylabel("pool child RSS (MB)")
    ax.set_title("Tiny VLM: RSS over tasks")
    twin = ax.twinx()
    for label, run_ in cache["runs"].items():
        if run_.get("skipped") or not run_["mlx"]:
            continue
        twin.plot(range(1, len(run_["mlx"]) + 1), [m["mlx_cache_mb"] for m in run_["mlx"]],
                  ls=":", label=f"MLX cache, clear {label}")
    twin.set_ylabel("MLX cache (MB)")
    top = max((m["mlx_cache_mb"] for r in cache["runs"].values() if not r.get("skipped")
               for m in r["mlx"]), default=0.0)
    twin.set_ylim(0, top * 2.5 + 0.01)  # MLX lines in the lower half, RSS from 0
    ax.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")

    ax = axes[0][1]
    for mode, run_ in pdf["runs"].items():
        if run_["busy_series"]:
            xs, ys = zip(*run_["busy_series"], strict=True)
            ax.plot(xs, ys, label=f"mode={mode} ({run_['seconds']:.0f} s)")
    ax.set_xlabel("seconds into the job")
    ax.set_ylabel("busy child RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{pdf['pages']}-page PDF, one job")
    ax.legend(fontsize=8)

    ax = axes[0][2]
    limits = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    ax.plot(limits, [modelled(x, recycle["task_seconds"], recycle["recycle_seconds"])
                     for x in limits], color="#999999", label="modelled")
    never = recycle["runs"]["never"]["tasks_per_s"]
    ax.axhline(never, ls="--", color="#2ca02c", lw=1, label="never recycled (measured)")
    for run_ in recycle["runs"].values():
        if run_["limit"]:
            ax.plot([run_["limit"]], [run_["tasks_per_s"]], "o", color="#1f77b4")
    ax.axvline(200, ls=":", color="#777777", lw=1, label="default 200")
    ax.set_xscale("log")
    ax.set_xlabel("max_tasks_per_child")
    ax.set_ylabel("tasks / s")
    ax.set_title("Tiny VLM: recycling cost")
    ax.legend(fontsize=8)
    return fig
