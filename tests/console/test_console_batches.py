"""The console's batch page in Debian's chromium: progress, the manifest as a table.

moto's S3 server, a worker with the fake engine and the control worker, the Procfile's
`api` process and one headless chromium (Playwright for Python, the system's chromium).
Four one-page PNGs in `s3://src/`, one of them not an image, read as Alice's batch:
its page shows every document with its status, code and job, filters by status and by
code, links to each document's job (a page view of Alice's: its image and line), and
is 404 to Bob, as each of its documents' jobs is.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.api.test_batch_pages import OWN, batch_ended, start_batch_service
from tests.api_server import ApiServer, create_token, session
from tests.harness import Worker
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

NAMES = ["doc-0.png", "doc-1.png", "<b>doc-2</b>.png", "doc-3.png"]
BAD = "<b>doc-2</b>.png"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    for bucket in ("src", "out"):
        server.client().create_bucket(Bucket=bucket)
    for i, name in enumerate(NAMES):
        body = b"not an image at all" if name == BAD else png(200, (40 + i, 30 + i))
        server.client().put_object(Bucket="src", Key=f"set/{name}", Body=body)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, s3: MotoS3,
        start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_batch_service(tmp_path_factory, s3, start_worker, start_api)


@pytest.fixture(scope="module")
def tokens(api: ApiServer, redis_url: str) -> dict[str, str]:
    return {name: create_token(redis_url, name, *OWN) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def batch(api: ApiServer, tokens: dict[str, str]) -> dict[str, Any]:
    """Alice's batch of the four documents, to its end."""
    info = batch_ended(session(tokens["alice"]), api, "s3://out/set/")
    assert info["state"] == "PARTIAL", info
    return info


@pytest.fixture(scope="module")
def page(api: ApiServer, tokens: dict[str, str]) -> Iterator[Page]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium "
                    "(apt-get install chromium)")
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic"])
        tab = browser.new_page()
        tab.goto(f"{api.url}/console/signin")
        tab.fill("input[name=token]", tokens["alice"])
        tab.click("button[type=submit]")
        tab.wait_for_url(f"{api.url}/console/jobs")
        yield tab
        browser.close()


def rows(tab: Page) -> list[dict[str, str]]:
    return list(tab.eval_on_selector_all("tr.document", """rows => rows.map(r => ({
        name: r.querySelector('.filename').textContent, status:
        r.querySelector('.status').textContent, code: r.querySelector('.code').textContent,
        job: r.dataset.job}))"""))


def test_the_batch_page_shows_its_manifest_and_filters_it(page: Page, api: ApiServer,
                                                          batch: dict[str, Any]) -> None:
    page.goto(f"{api.url}/console/jobs")
    page.fill("input[name=batch]", batch["id"])
    page.click("form.filters button")
    page.wait_for_url(f"{api.url}/console/batches/{batch['id']}")
    shown = rows(page)
    assert sorted(row["name"] for row in shown) == sorted(NAMES)
    bad, = (row for row in shown if row["name"] == BAD)
    assert bad["status"] == "FAILURE" and bad["code"]
    assert {row["status"] for row in shown if row["name"] != BAD} == {"SUCCESS"}
    assert page.query_selector_all("main b") == []  # a name of markup stays text
    page.select_option("select[name=code]", bad["code"])
    page.click("form.filters button")
    assert [row["name"] for row in rows(page)] == [BAD]
    page.goto(f"{api.url}/console/batches/{batch['id']}?status=SUCCESS")
    good = rows(page)
    assert len(good) == len(NAMES) - 1
    for row in good:
        assert page.get_attribute(f"tr[data-job='{row['job']}'] a", "href") == \
            f"/console/jobs/{row['job']}"


def test_a_documents_link_opens_its_page(page: Page, api: ApiServer,
                                        batch: dict[str, Any]) -> None:
    """A document's job is the batch's client's: its page, image and line are shown."""
    page.goto(f"{api.url}/console/batches/{batch['id']}?status=SUCCESS")
    job = rows(page)[0]["job"]
    page.click(f"tr[data-job='{job}'] a")
    page.wait_for_url(f"{api.url}/console/jobs/{job}")
    page.wait_for_selector("#page-1.drawn")
    page.wait_for_function("() => { const i = document.querySelector('#page-1 img.scan');"
                           " return i.complete && i.naturalWidth > 0; }")
    texts = page.eval_on_selector_all("#page-1 .lines .text", "t => t.map(e => e.textContent)")
    assert len(texts) == 1 and texts[0].startswith("fake "), texts
    assert page.is_hidden("#page-1 .page-error")


def test_another_clients_batch_is_not_found(page: Page, api: ApiServer,
                                            tokens: dict[str, str],
                                            batch: dict[str, Any]) -> None:
    page.goto(f"{api.url}/console/batches/{batch['id']}")
    jobs = [row["job"] for row in rows(page)]
    bob = page.context.browser.new_page()  # type: ignore[union-attr]
    bob.goto(f"{api.url}/console/signin")
    bob.fill("input[name=token]", tokens["bob"])
    bob.click("button[type=submit]")
    bob.wait_for_url(f"{api.url}/console/jobs")
    answer = bob.goto(f"{api.url}/console/batches/{batch['id']}")
    assert answer is not None and answer.status == 404
    for job in jobs:  # nor is any of its documents' jobs
        answer = bob.goto(f"{api.url}/console/jobs/{job}")
        assert answer is not None and answer.status == 404
    bob.close()
