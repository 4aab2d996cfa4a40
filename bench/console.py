"""The console's speed: a 100-page job's page shown in chromium, page JSON and images.

One Procfile worker (tesseract, two children) and the Procfile's `api` process on one
Redis. A 100-page scanned PDF (10 with --quick; each page a 300-dpi render of a few
lines of text) is read as one job. Then, with the API idle:

- the job page in Debian's headless chromium (Playwright for Python, signed in with the
  form): from navigation to its first page shown (the page image decoded and every
  line box drawn), 10 loads after one warm-up, and the page images the browser asked
  for meanwhile (later pages load as they scroll into view);
- `GET /v1/jobs/{id}/pages/{n}`, `GET .../image` (the stored preview, which the
  console shows) and `.../image?width=800` (a smaller copy made on request), each over
  every page in turn, 200 requests after one warm pass: p50 and p95.

The API is reached over loopback with requests (bearer token) for the JSON and image
figures. The harness (`ApiServer`, `create_token`, `session`) is the tests' own
(tests/api_server.py), as bench/api.py uses it.
"""

from __future__ import annotations

import shutil
import time

import pymupdf
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, sync_playwright

from bench.common import BenchError, Context, Ratio, Report, Services, Table, percentile
from devkit.api_server import ApiServer, create_token, session

LINES = ("Quarterly report of the northern depot", "Deliveries rose by twelve percent",
         "Returns fell to their lowest level", "Staff training continues in May")
WIDTH = 800  # a smaller copy (`?width=`), beside the full-size image the console shows
LOADS = 10
# When each part of the first page had arrived, from the browser's Resource Timing.
PHASES = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const all = performance.getEntriesByType('resource');
  const end = (test) => { const r = all.find((e) => test(e.name)); return r ? r.responseEnd : -1; };
  const json = all.filter((e) => /[/]pages[/]1$/.test(e.name));
  return {html: nav.responseEnd, parsed: nav.domContentLoadedEventStart,
          script: end((n) => n.endsWith('/console.js')),
          json_requests: json.length,
          json_last: json.length ? json[json.length - 1].responseEnd : -1,
          json: end((n) => /[/]pages[/]1$/.test(n)),
          image: end((n) => /[/]pages[/]1[/]image$/.test(n)),
          drawn: (performance.getEntriesByName('console:page-1-drawn')[0] || {startTime: -1})
            .startTime, seen: performance.now()};
}"""
REQUESTS = 200


def scanned_pdf(pages: int) -> bytes:
    """`pages` scanned-like pages: each a 300-dpi image of a few lines, its number first."""
    doc = pymupdf.open()
    for number in range(1, pages + 1):
        source = pymupdf.open()
        sheet = source.new_page(width=420, height=300)
        for i, line in enumerate((f"Page {number}", *LINES)):
            sheet.insert_text((30, 50 + 45 * i), line, fontsize=15)
        png = sheet.get_pixmap(dpi=300, colorspace=pymupdf.csGRAY).tobytes("png")
        page = doc.new_page(width=420, height=300)
        page.insert_image(page.rect, stream=png)
    return bytes(doc.tobytes(garbage=3, deflate=True))


def _ended(http: requests.Session, api: ApiServer, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
        if status["status"] in ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED"):
            if status["status"] != "SUCCESS":
                raise BenchError(f"the document's job ended {status['status']}: {status}")
            return
        time.sleep(0.5)
    raise BenchError(f"the document's job did not end within {timeout:.0f} s")


def _first_page_seconds(tab: Page, url: str, phases: list[dict[str, float]]
                        ) -> tuple[float, int]:
    """Seconds from navigation to page 1 shown, and the page images asked for by then.

    `phases` gains when (ms after the navigation's start, in the browser's own clock)
    the page's HTML, the script, page 1's JSON and its image had arrived.
    """
    asked: list[str] = []

    def seen(request: Request) -> None:
        if "/image" in request.url:
            asked.append(request.url)

    tab.on("request", seen)
    started = time.perf_counter()
    tab.goto(url, wait_until="commit")
    try:
        _wait_shown(tab)
    except PlaywrightError as exc:
        shown = tab.evaluate("""() => [document.querySelector('#page-1 .page-error')?.textContent,
            document.querySelector('#page-1 img.scan')?.naturalWidth,
            document.querySelectorAll('#page-1 [data-line]').length]""")
        raise BenchError(f"page 1 not shown (page error, image width, line elements: "
                         f"{shown})") from exc
    seconds = time.perf_counter() - started
    phases.append(tab.evaluate(PHASES))
    return seconds, len(asked)


def _wait_shown(tab: Page) -> None:
    tab.wait_for_function("() => { const s = document.querySelector('#page-1.drawn');"
                          " const i = s && s.querySelector('img.scan');"
                          " return i && i.complete && i.naturalWidth > 0; }",
                          polling="raf", timeout=30_000)


def _timed_gets(http: requests.Session, urls: list[str]) -> list[float]:
    times = []
    for url in urls:
        started = time.perf_counter()
        answer = http.get(url, timeout=30)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise BenchError(f"GET {url}: {answer.status_code} {answer.text[:200]}")
    return times


def run(ctx: Context) -> Report:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise BenchError("chromium is not installed (`make chromium`)")
    pages = ctx.size(100, 10)
    data = scanned_pdf(pages)
    report = Report("console")
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="2") as (_, client):
        url = client.settings.redis_url
        api = ApiServer(ctx.workdir / "api.log", {"REDIS_URL": url}).start()
        try:
            token = create_token(url, "bench")
            http = session(token)
            started = time.perf_counter()
            answer = http.post(f"{api.url}/v1/jobs", files={"file": ("report.pdf", data)},
                               data={"mode": "ocr"}, timeout=60)
            if answer.status_code != 202:
                raise BenchError(f"POST /v1/jobs: {answer.status_code} {answer.text[:200]}")
            job_id = answer.json()["id"]
            _ended(http, api, job_id, 60.0 + 20.0 * pages)
            read_seconds = time.perf_counter() - started
            phases: list[dict[str, float]] = []
            shown, images_asked = _browser_loads(chromium, api, token, job_id, phases)
            figures = _requests(http, api, job_id, pages)
        finally:
            api.stop()
    _fill(report, pages, read_seconds, shown, images_asked, figures)
    _phases(report, phases)
    return report


def _browser_loads(chromium: str, api: ApiServer, token: str, job_id: str,
                   phases: list[dict[str, float]]) -> tuple[list[float], list[int]]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            tab = context.new_page()
            tab.goto(f"{api.url}/console/signin")
            tab.fill("input[name=token]", token)
            tab.click("button[type=submit]")
            tab.wait_for_url(f"{api.url}/console/jobs")
            url = f"{api.url}/console/jobs/{job_id}"
            _first_page_seconds(context.new_page(), url, [])  # warm-up
            shown, asked = [], []
            for _ in range(LOADS):
                fresh = context.new_page()
                seconds, images = _first_page_seconds(fresh, url, phases)
                fresh.close()
                shown.append(seconds)
                asked.append(images)
        finally:
            browser.close()
    return shown, asked


def _requests(http: requests.Session, api: ApiServer, job_id: str,
              pages: int) -> dict[str, list[float]]:
    base = f"{api.url}/v1/jobs/{job_id}/pages"
    kinds = {"page JSON": "", "page image, full size": "/image",
             f"page image, width {WIDTH}": f"/image?width={WIDTH}"}
    found: dict[str, list[float]] = {}
    for name, tail in kinds.items():
        urls = [f"{base}/{1 + i % pages}{tail}" for i in range(REQUESTS)]
        _timed_gets(http, urls[:pages])  # warm
        found[name] = _timed_gets(http, urls)
    sizes = [len(http.get(f"{base}/{n}/image", timeout=30).content) for n in range(1, pages + 1)]
    found["image bytes"] = [float(size) for size in sizes]
    return found


def _fill(report: Report, pages: int, read_seconds: float, shown: list[float],
          asked: list[int], figures: dict[str, list[float]]) -> None:
    table = Table(f"console: a {pages}-page job (read in {read_seconds:.0f} s), API idle",
                  ["what", "n", "p50 ms", "p95 ms", "max ms"])
    table.rows.append(["first page shown in chromium", len(shown),
                       round(1000 * percentile(shown, 50), 1),
                       round(1000 * percentile(shown, 95), 1), round(1000 * max(shown), 1)])
    for name, times in figures.items():
        if name != "image bytes":
            table.rows.append([name, len(times), round(1000 * percentile(times, 50), 2),
                               round(1000 * percentile(times, 95), 2),
                               round(1000 * max(times), 2)])
    report.tables.append(table)
    sizes = figures["image bytes"]
    report.notes.append(f"page images asked for while the first page showed: "
                        f"{min(asked)}-{max(asked)} of {pages}; a full-size page image "
                        f"{percentile(sizes, 50) / 1000:.1f} KB median, "
                        f"{max(sizes) / 1000:.1f} KB at most")
    report.data.update(pages=pages, read_seconds=read_seconds, first_page_seconds=shown,
                       images_asked=asked, **{k.replace(" ", "_"): v
                                              for k, v in figures.items()})
    first = max(shown)
    report.ratios += [
        Ratio("console first page shown, slowest of 10 (s)", first, "≤ 1", first <= 1.0),
        Ratio("page JSON p95 (ms)", 1000 * percentile(figures["page JSON"], 95), "≤ 50",
              percentile(figures["page JSON"], 95) <= 0.050),
        Ratio("page image p95, full size (ms)",
              1000 * percentile(figures["page image, full size"], 95), "≤ 150",
              percentile(figures["page image, full size"], 95) <= 0.150),
    ]


def _phases(report: Report, phases: list[dict[str, float]]) -> None:
    table = Table("the first page's parts, ms after navigation (browser clock; drawn: the "
                  "script's mark, seen: when the harness's poll saw it)",
                  ["arrived", "p50", "max"])
    for part in ("html", "script", "parsed", "json", "json_last", "json_requests", "image",
                 "drawn", "seen"):
        values = [p[part] for p in phases if p.get(part, -1) >= 0]
        if values:
            table.rows.append([part, round(percentile(values, 50), 1), round(max(values), 1)])
    report.tables.append(table)
    report.data["first_page_phases_ms"] = phases
