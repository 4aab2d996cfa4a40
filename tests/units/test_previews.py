"""Page previews: within their byte budget on any page; a cached answer's by reference.

`page_preview` on noise (grey and colour, at and above the preview's size), the
corpus's densest scan, a plain page and degenerate sizes; `PreviewStore` on a real
redis-server: a reference reads the source's previews, keeps them as long as its
longest holder, and copies no bytes.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import pytest
import redis
from PIL import Image

from tasks.pipeline.previews import PREVIEW_BUDGET, PREVIEW_TRIES, page_preview
from tasks.records.formats import PREVIEW_LONG_SIDE
from tasks.state.keys import preview_key, preview_source_key
from tasks.state.previews import PreviewStore
from tests.harness import corpus


def noise(mode: str, size: tuple[int, int], seed: int = 90) -> Image.Image:
    bands = len(mode)
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * bands))


@pytest.mark.parametrize("page", [
    pytest.param(lambda: noise("L", (1236, 1600)), id="grey noise at the preview's size"),
    pytest.param(lambda: noise("RGB", (1236, 1600)), id="colour noise"),
    pytest.param(lambda: noise("L", (2550, 3300)), id="grey noise at 300 dpi"),
    pytest.param(lambda: noise("L", (1000, 1300)), id="grey noise, smaller than a preview"),
    pytest.param(lambda: Image.open(corpus("scan_linn.png")).convert("L"),
                 id="8-point type on textured paper"),
])
def test_a_preview_holds_to_its_budget_on_any_page(page: object) -> None:
    image = page()  # type: ignore[operator]
    preview = page_preview(image)
    assert preview is not None and len(preview.data) <= PREVIEW_BUDGET, \
        None if preview is None else len(preview.data)
    with Image.open(io.BytesIO(preview.data)) as shown:
        assert shown.format == "WEBP"
        assert max(shown.size) <= PREVIEW_LONG_SIDE
        # the page's shape kept, whatever size it took to fit
        assert abs(shown.width / shown.height - image.width / image.height) < 0.01


def test_a_page_that_fits_keeps_the_preview_s_size() -> None:
    with Image.open(corpus("scan_meditations.jpg")) as scan:
        preview = page_preview(scan.convert("L"))
    assert preview is not None
    with Image.open(io.BytesIO(preview.data)) as shown:
        assert max(shown.size) == PREVIEW_LONG_SIDE


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (3, 2)])
def test_degenerate_pages_have_a_preview(size: tuple[int, int]) -> None:
    preview = page_preview(noise("L", size))
    assert preview is not None and len(preview.data) <= PREVIEW_BUDGET


def test_the_tries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder that never fits: the probe and PREVIEW_TRIES encodes, then no preview."""
    from tasks.pipeline import previews

    tries: list[tuple[int, int]] = []

    def never_fits(image: Image.Image, quality: int = 0) -> bytes:
        tries.append(image.size)
        return b"x" * (PREVIEW_BUDGET + 1)

    monkeypatch.setattr(previews, "_webp", never_fits)
    assert page_preview(noise("L", (1236, 1600))) is None
    assert tries[0] == (1236 // previews.PROBE_REDUCTION, 1600 // previews.PROBE_REDUCTION)
    assert len(tries) == 1 + PREVIEW_TRIES
    assert tries[-1][0] * tries[-1][1] <= previews.BUDGET_PIXELS


@pytest.fixture
def store(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


def stored_bytes(store: redis.Redis) -> int:
    """MEMORY USAGE of every preview key: what the previews hold in Redis."""
    return sum(int(store.memory_usage(key, samples=0) or 0)
               for key in store.scan_iter(match="ocr:preview:*"))


def test_a_reference_shows_the_source_s_previews_without_copying(store: redis.Redis) -> None:
    previews = PreviewStore(store, 100)
    pages = {1: b"RIFF" + random.randbytes(100_000), 2: b"RIFF" + random.randbytes(100_000)}
    for number, data in pages.items():
        previews.put("first", number, data)
    held = stored_bytes(store)
    for n in range(50):
        previews.refer("first", f"again-{n}", [1, 2])
    assert previews.get("again-7", 2) == pages[2]
    assert previews.get("again-7", 3) is None  # a page it does not have
    assert previews.get("never-sent", 1) is None
    images = sorted(k for k in store.keys("ocr:preview:*") if not k.endswith(b":source"))
    assert images == [preview_key("first", 1).encode(), preview_key("first", 2).encode()]
    assert stored_bytes(store) - held < 50 * 200


def test_shared_previews_live_as_long_as_their_longest_holder(store: redis.Redis) -> None:
    PreviewStore(store, 100).put("first", 1, b"RIFF")
    PreviewStore(store, 1000).refer("first", "later", [1])  # a longer holder
    assert 990 < store.ttl(preview_key("first", 1)) <= 1000
    PreviewStore(store, 10).refer("first", "brief", [1])  # never shortened
    assert 990 < store.ttl(preview_key("first", 1)) <= 1000
    store.delete("celery-task-meta-first")  # the first job's result gone: the rest stays
    assert PreviewStore(store, 10).get("later", 1) == b"RIFF"
    assert PreviewStore(store, 10).get("brief", 1) == b"RIFF"


def test_another_clients_reference_lives_as_long_as_the_previews_alone(
        store: redis.Redis) -> None:
    PreviewStore(store, 100).put("theirs", 1, b"RIFF")
    PreviewStore(store, 1000).refer("theirs", "mine", [1], extend=False)
    assert 90 < store.ttl(preview_key("theirs", 1)) <= 100  # not kept longer
    assert 90 < store.ttl(preview_source_key("mine")) <= 100
    assert PreviewStore(store, 10).get("mine", 1) == b"RIFF"
    PreviewStore(store, 1000).refer("gone", "late", [1], extend=False)  # none left
    assert not store.exists(preview_source_key("late"))


def test_a_job_s_own_previews_come_first(store: redis.Redis) -> None:
    previews = PreviewStore(store, 100)
    previews.put("first", 1, b"RIFF-first")
    previews.refer("first", "first", [1])  # a job never refers to itself
    previews.refer("", "orphan", [1])  # nor to no job
    assert store.keys("ocr:preview:*:source") == []
    previews.put("second", 1, b"RIFF-second")
    previews.refer("first", "second", [1])
    assert previews.get("second", 1) == b"RIFF-second"
