"""The console at /console, driven in Debian's chromium by Playwright for Python.

One Redis, one worker reading with tesseract, the Procfile's `api` process and one
headless chromium for the module (Playwright drives the system's chromium: no browser
is downloaded). A person signs in with a token, sees their own jobs, opens a job's page
(its image loaded and one box per line), selects a line by its box and corrects it in
place (the text result then carries the correction), cannot open another client's
job, and reads a PDF whose text layer and file name are markup: nothing in them runs,
and both show as the text they are.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from PIL import Image, ImageFilter
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from tests.api_server import ApiServer, create_token, session
from tests.harness import ROOT, Worker, eventually

FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")
LINES = ["Invoice number 4471 for garden tools", "Delivered to the north gate on Monday",
         "Payment is due within thirty days"]
HOSTILE = ['<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>",
           "<b onmouseover=alert(3)>bold</b>"]
SCREENSHOT = os.environ.get("CONSOLE_SCREENSHOT")  # `make screenshot` sets docs/console.png
HOSTILE_NAME = "<img src=x onerror=alert(4)>.pdf"


def text_png(lines: list[str]) -> bytes:
    """A clean scan of `lines`: a PDF page of text drawn by PyMuPDF, rendered at 200 dpi."""
    doc = pymupdf.open()
    page = doc.new_page(width=420, height=200)
    for i, line in enumerate(lines):
        page.insert_text((30, 50 + 40 * i), line, fontsize=15)
    return bytes(page.get_pixmap(dpi=200).tobytes("png"))


def uncertain_png() -> bytes:
    """A scan of four lines, the second and fourth (nonsense words) blurred and speckled.

    Tesseract reads the clean lines with a confidence near 0.96 and the spoilt ones well
    under the console's 0.8.
    """
    lines = [LINES[0], "Qxzv wqlp jrrk 8831 vvbn zzqt", LINES[1], "Mjkw plzq 7719 xxrv qqtl wbnm"]
    doc = pymupdf.open()
    page = doc.new_page(width=420, height=240)
    for i, line in enumerate(lines):
        page.insert_text((30, 50 + 40 * i), line, fontsize=15)
    image = Image.open(io.BytesIO(page.get_pixmap(dpi=200).tobytes("png"))).convert("L")
    speckles = random.Random(7)
    for i in (1, 3):
        box = (0, int((34 + 40 * i) * 200 / 72), image.width, int((56 + 40 * i) * 200 / 72))
        part = image.crop(box).filter(ImageFilter.GaussianBlur(1.6))
        pixels = part.load()
        assert pixels is not None
        for x in range(part.width):
            for y in range(part.height):
                if speckles.random() < 0.08:
                    pixels[x, y] = speckles.choice((0, 255))
        image.paste(part, box)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def text_layer_pdf(lines: list[str]) -> bytes:
    """A PDF whose text layer holds `lines` exactly."""
    doc = pymupdf.open()
    page = doc.new_page(width=500, height=300)
    for i, line in enumerate(lines):
        page.insert_text((30, 60 + 40 * i), line, fontsize=12)
    return bytes(doc.tobytes())


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="2", OCR_DESKEW="0")


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api()


@pytest.fixture(scope="module")
def tokens(redis_url: str) -> dict[str, str]:
    return {name: create_token(redis_url, name) for name in ("alice", "bob")}


def sent(api: ApiServer, token: str, data: bytes, name: str, **fields: str) -> str:
    answer = session(token).post(f"{api.url}/v1/jobs", files={"file": (name, data)},
                                 data=fields, timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def ended(api: ApiServer, token: str, job_id: str) -> dict[str, Any]:
    http = session(token)

    def done() -> dict[str, Any] | None:
        status = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
        return dict(status) if status["status"] in FINAL else None

    status = eventually(done, 120, f"job {job_id} to end")
    assert status["status"] == "SUCCESS", status
    return status


@pytest.fixture(scope="module")
def jobs(api: ApiServer, tokens: dict[str, str]) -> dict[str, str]:
    """Alice's scan and hostile PDF, Bob's scan: each read to its end."""
    found = {"scan": sent(api, tokens["alice"], text_png(LINES), "invoice.png"),
             "hostile": sent(api, tokens["alice"], text_layer_pdf(HOSTILE), HOSTILE_NAME),
             "other": sent(api, tokens["bob"], text_png(LINES[:1]), "bobs.png")}
    owners = {"scan": "alice", "hostile": "alice", "other": "bob"}
    for what, job_id in found.items():
        ended(api, tokens[owners[what]], job_id)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium "
                    "(apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def dialogs() -> list[str]:
    """The messages of the dialogs (alert, confirm) Alice's tab opened."""
    return []


@pytest.fixture(scope="module")
def page(browser: Browser, api: ApiServer, tokens: dict[str, str], jobs: dict[str, str],
         dialogs: list[str]) -> Iterator[Page]:
    """Alice's tab, signed in through the form; every dialog it opens is recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()

    def opened(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", opened)
    tab.goto(f"{api.url}/console")
    assert tab.url.endswith("/console/signin")
    tab.fill("input[name=token]", tokens["alice"])
    tab.click("button[type=submit]")
    tab.wait_for_url(f"{api.url}/console/jobs")
    yield tab
    context.close()


def page_json(api: ApiServer, token: str, job_id: str, number: int = 1) -> dict[str, Any]:
    answer = session(token).get(f"{api.url}/v1/jobs/{job_id}/pages/{number}", timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def open_job(tab: Page, api: ApiServer, job_id: str) -> None:
    answer = tab.goto(f"{api.url}/console/jobs/{job_id}")
    assert answer is not None and answer.status == 200
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["cache-control"] == "no-store"  # a client's own page
    tab.wait_for_selector("#page-1.drawn")


def classes(tab: Page, selector: str) -> list[str]:
    return (tab.get_attribute(selector, "class") or "").split()


def test_sign_in_shows_the_clients_own_jobs(page: Page, api: ApiServer, tokens: dict[str, str],
                                             jobs: dict[str, str]) -> None:
    page.goto(f"{api.url}/console/jobs")
    listed = page.eval_on_selector_all("tr.job", "rows => rows.map(r => r.dataset.job)")
    assert set(listed) >= {jobs["scan"], jobs["hostile"]} and jobs["other"] not in listed
    assert page.text_content(f"tr[data-job='{jobs['scan']}'] .filename") == "invoice.png"
    assert page.text_content(".who") == "alice"
    # the cookie is out of the page's reach, and bound to this site
    cookie, = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""
    filtered = page.goto(f"{api.url}/console/jobs?status=FAILURE")
    assert filtered is not None and filtered.status == 200
    assert page.query_selector_all("tr.job") == []
    refused = page.goto(f"{api.url}/console/jobs?from=2026-13-40")
    assert refused is not None and refused.status == 400
    assert page.text_content(".code") == "bad_request"


def test_a_page_shows_its_image_and_one_box_per_line(page: Page, api: ApiServer,
                                                     tokens: dict[str, str],
                                                     jobs: dict[str, str]) -> None:
    read = page_json(api, tokens["alice"], jobs["scan"])
    ids = [line["id"] for line in read["lines"]]
    assert len(ids) == len(LINES), read
    open_job(page, api, jobs["scan"])
    page.wait_for_function("() => { const i = document.querySelector('#page-1 img.scan');"
                           " return i.complete && i.naturalWidth > 0; }")
    assert page.eval_on_selector_all("#page-1 .boxes [data-line]",
                                     "boxes => boxes.map(b => b.dataset.line)") == ids
    assert page.eval_on_selector_all("#page-1 .lines [data-line]",
                                     "lines => lines.map(l => l.dataset.line)") == ids
    texts = page.eval_on_selector_all("#page-1 .lines .text", "t => t.map(e => e.textContent)")
    assert texts == [line["text"] for line in read["lines"]]
    # a box selects its line, and a line its box
    page.click(f"#page-1 .boxes [data-line='{ids[1]}']")
    assert "selected" in classes(page, f"#page-1 li[data-line='{ids[1]}']")
    page.click(f"#page-1 li[data-line='{ids[2]}']")
    assert "selected" in classes(page, f"#page-1 .boxes [data-line='{ids[2]}']")
    assert "selected" not in classes(page, f"#page-1 .boxes [data-line='{ids[1]}']")
    assert "selected" not in classes(page, f"#page-1 li[data-line='{ids[1]}']")


def test_an_edit_in_place_is_what_the_result_carries(page: Page, api: ApiServer,
                                                     tokens: dict[str, str],
                                                     jobs: dict[str, str]) -> None:
    first = page_json(api, tokens["alice"], jobs["scan"])["lines"][0]
    open_job(page, api, jobs["scan"])
    line = f"#page-1 li[data-line='{first['id']}']"
    page.dblclick(line)
    page.fill(f"{line} input.edit", "Invoice number 4471 for garden tools, corrected")
    page.press(f"{line} input.edit", "Enter")
    page.wait_for_selector(f"{line}.corrected, #page-1 .page-error:not([hidden])")
    assert page.is_hidden("#page-1 .page-error"), page.text_content("#page-1 .page-error")
    shown = page_json(api, tokens["alice"], jobs["scan"])
    line_now = shown["lines"][0]
    assert line_now["text"] == "Invoice number 4471 for garden tools, corrected"
    assert line_now["original"] == first["text"] and line_now["corrected"]["by"] == "alice"
    result = session(tokens["alice"]).get(
        f"{api.url}/v1/jobs/{jobs['scan']}/result?format=text", timeout=10)
    assert "garden tools, corrected" in result.text
    # an edit without the session's CSRF token is refused, with the cookie alone
    refused = page.evaluate(
        """([url, id]) => fetch(url + '/lines/' + id, {method: 'PUT', headers:
           {'Content-Type': 'application/json'}, body: JSON.stringify({text: 'forged'})})
           .then(r => r.status)""",
        [f"/v1/jobs/{jobs['scan']}/pages/1", first["id"]])
    assert refused == 403
    # reverting from the page gives the engine's text back
    page.click(f"{line} .revert")
    page.wait_for_function(f"() => !document.querySelector(\"{line}\").classList"
                           ".contains('corrected')")
    assert page_json(api, tokens["alice"], jobs["scan"])["lines"][0]["text"] == first["text"]


@pytest.fixture(scope="module")
def uncertain(api: ApiServer, tokens: dict[str, str]) -> str:
    """Alice's scan with two spoilt lines, read to its end."""
    job_id = sent(api, tokens["alice"], uncertain_png(), "uncertain.png")
    ended(api, tokens["alice"], job_id)
    return job_id


def selected_line(tab: Page) -> list[str]:
    """The line ids selected: of the line in the text, then of its box."""
    return [*tab.eval_on_selector_all("#page-1 .lines li.selected",
                                      "l => l.map(e => e.dataset.line)"),
            *tab.eval_on_selector_all("#page-1 .boxes .selected",
                                      "b => b.map(e => e.dataset.line)")]


def test_the_n_key_goes_to_the_next_uncertain_line(page: Page, api: ApiServer,
                                                   tokens: dict[str, str],
                                                   uncertain: str) -> None:
    lines = page_json(api, tokens["alice"], uncertain)["lines"]
    ids = [line["id"] for line in lines]
    low = [line["id"] for line in lines
           if line["confidence"] is not None and line["confidence"] < 0.8]
    assert len(low) >= 2 and len(low) < len(lines), lines  # the scan's spoilt lines
    open_job(page, api, uncertain)
    assert selected_line(page) == []
    page.keyboard.press("n")
    assert selected_line(page) == [low[0], low[0]]
    assert "conf-low" in classes(page, f"#page-1 .boxes [data-line='{low[0]}']")
    assert page.evaluate("document.activeElement.dataset.line") == low[0]
    page.keyboard.press("n")
    assert selected_line(page) == [low[1], low[1]]
    for _ in low[1:]:  # past the last uncertain line: the first again
        page.keyboard.press("n")
    assert selected_line(page) == [low[0], low[0]]
    # from a line selected by a click: the next uncertain line after it
    after = next(i for i, line_id in enumerate(ids) if line_id == low[0]) + 1
    page.click(f"#page-1 li[data-line='{ids[after]}']")
    page.keyboard.press("n")
    expected = next(line_id for line_id in ids[after + 1:] + ids[:after + 1]
                    if line_id in low)
    assert selected_line(page) == [expected, expected]
    # while a line is edited, `n` is a letter of its text
    page.dblclick(f"#page-1 li[data-line='{expected}']")
    edit = f"#page-1 li[data-line='{expected}'] input.edit"
    page.fill(edit, "ru")
    page.press(edit, "n")
    assert page.input_value(edit) == "run"
    assert selected_line(page) == [expected, expected]
    page.press(edit, "Escape")
    assert page.query_selector(edit) is None or page.is_hidden(edit)


def test_a_page_read_again_is_compared_side_by_side(page: Page, api: ApiServer,
                                                   tokens: dict[str, str],
                                                   jobs: dict[str, str],
                                                   redis_url: str) -> None:
    """"Read again" sends the page as a new job of the same client; both readings shown.

    It offers the engines a live worker runs, no other: this module's tesseract worker
    runs tesseract (and rapidocr, which its language routing loads, where installed).
    """
    from tests.harness import make_client

    first = [line["text"] for line in page_json(api, tokens["alice"], jobs["scan"])["lines"]]
    open_job(page, api, jobs["scan"])
    offered = page.eval_on_selector_all("#page-1 .compare-form option",
                                        "o => o.map(e => e.value)")
    assert "tesseract" in offered and "mlx-vlm" not in offered and "vlm-api" not in offered
    watcher = make_client(redis_url)
    try:
        live = watcher.live_queues()
    finally:
        watcher.close()
    from tasks.admission import live_engines

    assert offered == live_engines(live), (offered, live)
    refused = page.evaluate(
        """([url, csrf]) => fetch(url, {method: 'POST', body: new URLSearchParams(
           {engine: 'vlm-api', csrf: csrf})}).then(r => r.status)""",
        [f"/console/jobs/{jobs['scan']}/pages/1/compare",
         page.get_attribute("#page-1 .compare-form input[name=csrf]", "value")])
    assert refused == 400
    page.select_option("#page-1 .compare-form select", "tesseract")
    page.click("#page-1 .compare-form button")
    page.wait_for_selector(".compare", timeout=120_000)  # reloads until the job ends
    other = page.url.rsplit("/", 1)[-1]
    assert other not in jobs.values()
    second = [line["text"] for line in page_json(api, tokens["alice"], other)["lines"]]
    rows = page.eval_on_selector_all(".reading.first li", "r => r.map(e => e.className)")
    assert len(rows) == max(len(first), len(second)) and len(first) == len(LINES)
    lefts = page.eval_on_selector_all(".reading.first li", "r => r.map(e => e.textContent)")
    rights = page.eval_on_selector_all(".reading.second li", "r => r.map(e => e.textContent)")
    for left, right, kind in zip(lefts, rights, rows, strict=True):
        assert kind == ("same" if left == right else "differs"), (left, right)
    assert [text for text in lefts if text] == first
    assert [text for text in rights if text] == second
    listed = session(tokens["alice"]).get(f"{api.url}/v1/jobs/{other}", timeout=10).json()
    assert listed["client"] == "alice" and "page 1" in listed["filename"]


def test_a_jobs_page_warnings_are_shown(page: Page, api: ApiServer,
                                        tokens: dict[str, str]) -> None:
    """A page read in the default languages says so, and what to do, on the job's page."""
    job_id = sent(api, tokens["alice"], text_png(["Hi 42"]), "few.png")
    ended(api, tokens["alice"], job_id)
    result = session(tokens["alice"]).get(f"{api.url}/v1/jobs/{job_id}/result?format=json",
                                          timeout=10).json()
    [warning] = result["warnings"]
    assert warning["code"] == "lang_uncertain", warning
    open_job(page, api, job_id)
    shown = page.eval_on_selector_all(
        ".warnings li", "w => w.map(e => [e.dataset.page, e.textContent])")
    assert shown == [["1", f"lang_uncertain {warning['message']}"]]
    assert page.get_attribute(".warnings li a", "href") == "#page-1"


def test_the_jobs_submit_py_sent_as_the_client_are_listed(page: Page, api: ApiServer,
                                                           redis_url: str,
                                                           tmp_path: Path) -> None:
    """README's order: `submit.py --client alice` first, then alice's console lists it."""
    scan = tmp_path / "from-submit.png"
    scan.write_bytes(text_png(LINES[:1]))
    done = subprocess.run([sys.executable, "submit.py", "--client", "alice", str(scan)],
                          cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    elsewhere = subprocess.run(
        [sys.executable, "submit.py", "--no-wait", "--client", "mallory", str(scan)],
        cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
        text=True, timeout=120)
    theirs = elsewhere.stdout.split("\t")[0]
    page.goto(f"{api.url}/console/jobs")
    rows = page.eval_on_selector_all(
        "tr.job", "rows => rows.map(r => [r.dataset.job, r.querySelector('.filename')"
        ".textContent])")
    [job] = [job_id for job_id, name in rows if name == "from-submit.png"]
    assert theirs not in [job_id for job_id, _ in rows]
    open_job(page, api, job)
    assert page.text_content("h1.filename") == "from-submit.png"
    answer = page.goto(f"{api.url}/console/jobs/{theirs}")
    assert answer is not None and answer.status == 404


def test_another_clients_job_is_not_found(page: Page, api: ApiServer,
                                          jobs: dict[str, str]) -> None:
    answer = page.goto(f"{api.url}/console/jobs/{jobs['other']}")
    assert answer is not None and answer.status == 404
    statuses = page.evaluate(
        """(id) => Promise.all(['', '/pages/1', '/pages/1/image'].map(
             part => fetch('/v1/jobs/' + id + part).then(r => r.status)))""", jobs["other"])
    assert statuses == [404, 404, 404]


def test_a_hostile_document_shows_as_text_and_runs_nothing(page: Page, api: ApiServer,
                                                           jobs: dict[str, str],
                                                           dialogs: list[str]) -> None:
    open_job(page, api, jobs["hostile"])
    texts = page.eval_on_selector_all("#page-1 .lines .text", "t => t.map(e => e.textContent)")
    assert texts == HOSTILE
    assert page.text_content("h1.filename") == HOSTILE_NAME
    # the markup became no element: no image, script or bold in the page's text parts
    assert page.query_selector_all("main img:not(.scan), main script, main b") == []
    page.hover("#page-1 .lines li:last-child")
    page.goto(f"{api.url}/console/jobs")
    assert page.text_content(f"tr[data-job='{jobs['hostile']}'] .filename") == HOSTILE_NAME
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_a_job_page_screenshot(page: Page, api: ApiServer, jobs: dict[str, str],
                               tmp_path: Path) -> None:
    """The picture of a job page (docs/console.png) shows its lines' coloured boxes."""
    open_job(page, api, jobs["scan"])
    page.wait_for_function("() => document.querySelector('#page-1 img.scan').complete")
    page.click("#page-1 .lines li:nth-child(2)")
    out = Path(SCREENSHOT).resolve() if SCREENSHOT else tmp_path / "console.png"
    page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1400, "height": 620})
    with Image.open(out) as image:
        assert image.size == (1400, 620)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    # the boxes' borders (high and middle confidence: tasks/console/static/console.css)
    drawn = {rgb: n for n, rgb in colours if rgb in {(46, 125, 50), (249, 168, 37)}}
    assert sum(drawn.values()) > 200, drawn
