"""vlm-api fleet: how many pages one worker host keeps in flight, at what memory.

1. Against a simulator: `SimulatedInferenceServer` (devkit/inference_server.py), a
   simulated OpenAI-compatible server in the bench process that answers every request
   `LATENCY` s after it arrives whatever the load (what a GPU server does well below
   its batch limit), any number at once. One real worker (the Procfile's `worker`
   line, OCR_ENGINE=vlm-api, the default page preparation: render, orientation check,
   deskew, resize, PNG encode) with OCR_VLM_API_IN_FLIGHT 4, 16, 64, 128 and 256; one
   PDF of 2 x in-flight scanned pages (scan_linn.png, a Letter page, at 200 dpi) a run.
   Pages/s two ways: at the server (pages over the time from the first request to the
   last answer it saw) and end to end (pages over submit-to-result, the PDF's split and
   the job's merge included); ideal = in-flight / latency. The worker's CPU seconds a page
   (psutil, parent and children) say what the page preparation costs.
   The worker's PSS (parent and children, psutil's smaps-based `pss`) idle and at its
   peak during the run, sampled every 0.2 s; and with exactly 128 pages waiting at the
   server (it answers none until they all wait: `held_run`), which the CPU may not
   reach at 30 s answers.
   Goals: pages/s at the server >= 0.9 x ideal up to 128 in flight (or the figure where this
   CPU stops it); PSS <= 1.5 GB at 128.
2. Against a real `mlx_vlm.server` (the Procfile's `vlm-server`) with the tests' tiny
   random-weight model (devkit/tiny_vlm.py, built offline): pages/s of a 16-page PDF at
   1, 4 and 16 in flight, 16 tokens a page (every read ends at the limit:
   OCR_VLM_FALLBACK=none, so no tesseract time is mixed in).

`--quick`: 2 s answers, 4 and 16 in flight, 2 x in-flight pages; part 2 at 1 and 4 in
flight with 8 pages.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from bench.common import (
    MLX_ENV,
    BenchError,
    Context,
    Ratio,
    Report,
    Services,
    Table,
    build_tiny_model,
    new_figure,
    worker_processes,
)
from devkit.corpus import CORPUS
from devkit.harness import Worker
from devkit.inference_server import SimulatedInferenceServer, VlmServer
from devkit.pdf_fixtures import repeated_image_pdf

PAGE = "scan_linn.png"
MODEL = "tiny"


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {"latency": 2.0, "in_flight": (4, 16), "rounds": 2,
                "real_in_flight": (1, 4), "real_pages": 8}
    return {"latency": 30.0, "in_flight": (4, 16, 64, 128, 256), "rounds": 2,
            "real_in_flight": (1, 4, 16), "real_pages": 16}


class PeakPss:
    """The worker's summed PSS (parent and children), sampled in a thread: idle, peak."""

    def __init__(self, worker: Worker, interval: float = 0.2) -> None:
        self.worker = worker
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now_mb(self) -> float:
        total = 0.0
        for process in worker_processes(self.worker):
            try:
                total += process.memory_full_info().pss / 2**20
            except psutil.Error:
                pass  # a child that ended between the listing and the read
        return total

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self.interval)


def cpu_seconds(worker: Worker) -> float:
    """User and system CPU seconds of the worker's processes so far."""
    total = 0.0
    for process in worker_processes(worker):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def steady_rate(server: SimulatedInferenceServer) -> float | None:
    """Pages over the time from the first request to the last answer, at the server.

    With R rounds of N pages in flight and answers of L s, a worker that prepares pages
    at no cost gives R x N / (R x L) = N / L, the ideal; its preparation time (the first
    N pages are prepared before they are sent, later ones while others wait) shows as
    the shortfall.
    """
    if not server.answers or not server.arrivals:
        return None
    span = max(server.answers) - min(server.arrivals)
    return len(server.answers) / span if span > 0 else None


def simulated_run(services: Services, data: bytes, pages: int, in_flight: int,
                  latency: float) -> dict[str, Any]:
    server = SimulatedInferenceServer(latency=latency).start()
    env = {"OCR_ENGINE": "vlm-api", "OCR_VLM_API_URL": server.url,
           "OCR_VLM_API_MODEL": server.model, "OCR_VLM_API_IN_FLIGHT": str(in_flight),
           "OCR_VLM_TEMPERATURES": "0", "OCR_PDF_DPI": "200"}
    try:
        with services.stack(**env) as (worker, client):
            sampler = PeakPss(worker)
            idle = sampler.now_mb()
            cpu_before = cpu_seconds(worker)
            started = time.perf_counter()
            with sampler:
                job = client.submit(data, filename="scans.pdf", engine="vlm-api")
                result = client.wait([job], timeout=3600, poll=0.2)[job]
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(worker) - cpu_before
    finally:
        server.stop()
    if result.get("status") != "SUCCESS" or len(server.requests) != pages:
        raise BenchError(f"{in_flight} in flight: {result.get('status')}, "
                         f"{len(server.requests)} of {pages} pages at the server: "
                         f"{str(result.get('error'))[:500]}")
    steady = steady_rate(server)
    first = min(server.arrivals)
    row = {"in_flight": in_flight, "pages": pages, "latency": latency,
           "most_at_server": server.most_in_flight, "seconds": round(seconds, 1),
           "end_to_end": pages / seconds, "steady": steady, "ideal": in_flight / latency,
           "pss_idle_mb": round(idle, 1), "pss_peak_mb": round(sampler.peak_mb, 1),
           "cpu_s_per_page": round(cpu / pages, 3),
           "arrivals": [round(t - first, 2) for t in sorted(server.arrivals)],
           "answers": [round(t - first, 2) for t in sorted(server.answers)]}
    print(f"{in_flight} in flight: at the server {steady or 0:.2f} pages/s (ideal "
          f"{in_flight / latency:.2f}), end to end {pages / seconds:.2f}, at the server "
          f"at most {server.most_in_flight}, PSS {idle:.0f} -> {sampler.peak_mb:.0f} MB, "
          f"{cpu / pages:.3f} CPU s a page",
          flush=True)
    return row


def held_run(services: Services, data: bytes, in_flight: int) -> dict[str, Any]:
    """The worker's PSS with exactly `in_flight` pages waiting at the server.

    The simulator answers nothing until that many requests wait (however long the
    worker's CPU takes to prepare them), so the memory of a full pool is measured even
    where the CPU cannot keep it full at 30 s answers.
    """
    server = SimulatedInferenceServer()
    server.hold_until = in_flight
    server.hold_timeout = 1800
    server.start()
    env = {"OCR_ENGINE": "vlm-api", "OCR_VLM_API_URL": server.url,
           "OCR_VLM_API_MODEL": server.model, "OCR_VLM_API_IN_FLIGHT": str(in_flight),
           "OCR_VLM_TEMPERATURES": "0", "OCR_PDF_DPI": "200"}
    try:
        with services.stack(**env) as (worker, client):
            sampler = PeakPss(worker)
            idle = sampler.now_mb()
            with sampler:
                job = client.submit(data, filename="scans.pdf", engine="vlm-api")
                deadline = time.monotonic() + 1800
                while server.most_in_flight < in_flight:
                    if time.monotonic() > deadline:
                        raise BenchError(f"never {in_flight} pages in flight")
                    time.sleep(0.2)
                time.sleep(2)  # a few samples with every page waiting
                held = sampler.now_mb()
                server.release()
                client.wait([job], timeout=1800, poll=0.2)
    finally:
        server.stop()
    print(f"{in_flight} pages held at the server: PSS {idle:.0f} -> {held:.0f} MB "
          f"(peak {sampler.peak_mb:.0f})", flush=True)
    return {"in_flight": in_flight, "pss_idle_mb": round(idle, 1),
            "pss_held_mb": round(held, 1), "pss_peak_mb": round(sampler.peak_mb, 1)}


def real_runs(ctx: Context, services: Services, in_flights: tuple[int, ...],
              pages: int) -> list[dict[str, Any]]:
    models = ctx.workdir / "models"
    build_tiny_model(models, MODEL)
    side = 224 if ctx.quick else 448
    env = {**MLX_ENV, "OCR_ENGINE": "vlm-api", "OCR_MODEL_DIR": str(models),
           "OCR_MODEL": MODEL, "OCR_VLM_MAX_TOKENS": "16", "OCR_VLM_TEMPERATURES": "0",
           "OCR_VLM_FALLBACK": "none", "OCR_VLM_LONGEST_SIDE": str(side),
           "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0", "OCR_PDF_DPI": "100"}
    from PIL import Image

    with Image.open(CORPUS / PAGE) as image:
        data = repeated_image_pdf(image.convert("L"), pages, dpi=100)
        one = repeated_image_pdf(image.convert("L"), 1, dpi=100)
    server = VlmServer(ctx.workdir / "vlm-server.log", env).start(timeout=600)
    rows = []
    try:
        env["OCR_VLM_SERVER_PORT"] = str(server.port)
        for in_flight in in_flights:
            with services.stack(**env, OCR_VLM_API_IN_FLIGHT=str(in_flight)) as (_, client):
                warm = client.submit(one, filename="warm.pdf", engine="vlm-api")
                client.wait([warm], timeout=600)
                started = time.perf_counter()
                job = client.submit(data, filename="tiny.pdf", engine="vlm-api")
                result = client.wait([job], timeout=1800, poll=0.1)[job]
                seconds = time.perf_counter() - started
            # Every page read to the token limit is `vlm_incomplete` (no fallback): the
            # job then fails with that code, which is a page read all the same.
            code = getattr(result, "code", None) if not isinstance(result, dict) else \
                (result.get("error") or {}).get("code")
            read = [p for p in result.get("pages") or [] if p.get("vlm")] \
                if isinstance(result, dict) else []
            if len(read) != pages and code not in ("vlm_incomplete", "pages_failed"):
                raise BenchError(f"mlx_vlm.server, {in_flight} in flight: "
                                 f"{str(result)[:800]}")
            rows.append({"in_flight": in_flight, "pages": pages, "seconds": round(seconds, 2),
                         "pages_per_s": pages / seconds})
            print(f"mlx_vlm.server, {in_flight} in flight: {pages / seconds:.3f} pages/s",
                  flush=True)
    finally:
        server.stop()
    return rows


def run(ctx: Context) -> Report:
    report = Report("vlm_fleet")
    size = sizes(ctx)
    latency, rounds = size["latency"], size["rounds"]
    from PIL import Image

    rows: list[dict[str, Any]] = []
    with Services(ctx.workdir) as services:
        with Image.open(CORPUS / PAGE) as image:
            scan = image.convert("L")
        for in_flight in size["in_flight"]:
            pages = max(8, rounds * in_flight)
            data = repeated_image_pdf(scan, pages, dpi=200)
            rows.append(simulated_run(services, data, pages, in_flight, latency))
        most = size["in_flight"][-2] if len(size["in_flight"]) > 2 else size["in_flight"][-1]
        held = held_run(services, repeated_image_pdf(scan, most, dpi=200), most)
        real = real_runs(ctx, services, size["real_in_flight"], size["real_pages"])

    table = Table(f"one vlm-api worker against a simulated server answering each page "
                  f"{latency:.0f} s after it arrives; {rounds} x in-flight scanned pages "
                  f"in one PDF", ["in flight", "pages", "at the server (max)",
                                   "pages/s at the server", "ideal", "server / ideal",
                                   "end-to-end pages/s", "PSS idle MB", "PSS peak MB",
                                   "worker CPU s a page"])
    for row in rows:
        steady = row["steady"] or 0.0
        table.rows.append([row["in_flight"], row["pages"], row["most_at_server"],
                           round(steady, 2), round(row["ideal"], 2),
                           round(steady / row["ideal"], 2), round(row["end_to_end"], 2),
                           row["pss_idle_mb"], row["pss_peak_mb"], row["cpu_s_per_page"]])
    server_table = Table(f"the same worker against a real mlx_vlm.server, tests' tiny "
                         f"random-weight model, 16 tokens a page, {size['real_pages']} "
                         "pages in one PDF", ["in flight", "seconds", "pages/s",
                                               "vs 1 in flight"])
    for row in real:
        server_table.rows.append([row["in_flight"], row["seconds"],
                                  round(row["pages_per_s"], 3),
                                  round(row["pages_per_s"] / real[0]["pages_per_s"], 2)])
    report.tables += [table, server_table]
    report.data = {"simulated": rows, "held": held, "mlx_vlm_server": real,
                   "latency": latency, "page": PAGE}
    report.notes.append(
        f"{held['in_flight']} pages held at the server at once (it answers none until all "
        f"wait): worker PSS {held['pss_idle_mb']:.0f} MB idle, {held['pss_held_mb']:.0f} MB "
        "with every page waiting")
    goals = not ctx.quick
    for row in rows:
        if row["in_flight"] <= 128 and row["steady"]:
            share = row["steady"] / row["ideal"]
            report.ratios.append(Ratio(f"pages/s at the server / ideal at {row['in_flight']} in "
                                       "flight", share, ">= 0.9" if goals else "",
                                       share >= 0.9 if goals else None))
    if held["in_flight"] == 128:
        gb = held["pss_held_mb"] / 1024
        report.ratios.append(Ratio("worker PSS GB with 128 pages in flight", gb, "<= 1.5",
                                   gb <= 1.5))
    report.notes.append(
        "2 CPU cores shared with six other sessions' work while this ran: the page "
        "preparation competes with them, so steady figures near the CPU's limit are low "
        "bounds; the simulated server costs the bench process little (one thread a request)")
    report.notes.append(
        "pages/s at the server is bounded by the worker's CPU: at W CPU-seconds a page on "
        "C free cores it cannot pass C / W, whatever the pages in flight (the table's "
        "last column gives W)")
    report.figure = _figure(rows, real)
    return report


def _figure(rows: list[dict[str, Any]], real: list[dict[str, Any]]) -> Any:
    fig, axes = new_figure(ncols=3, width=4.5)
    ins = [r["in_flight"] for r in rows]
    ax = axes[0][0]
    ax.plot(ins, [r["ideal"] for r in rows], "k--", label="ideal (in flight / latency)")
    ax.plot(ins, [r["steady"] or 0 for r in rows], "o-", label="at the server")
    ax.plot(ins, [r["end_to_end"] for r in rows], "s-", label="end to end")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pages in flight (OCR_VLM_API_IN_FLIGHT)")
    ax.set_ylabel("pages/s")
    ax.set_title("simulated server")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(ins, [r["pss_peak_mb"] for r in rows], "o-", label="peak")
    ax.plot(ins, [r["pss_idle_mb"] for r in rows], "s-", label="idle")
    ax.axhline(1536, color="k", linestyle="--", label="1.5 GB goal")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pages in flight")
    ax.set_ylabel("worker PSS MB")
    ax.set_title("worker memory")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    ax.plot([r["in_flight"] for r in real], [r["pages_per_s"] for r in real], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pages in flight")
    ax.set_ylabel("pages/s")
    ax.set_title("mlx_vlm.server, tiny model")
    return fig
