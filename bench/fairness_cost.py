"""A lone client's pages/s and Redis commands per page, on any checkout (before/after lanes).

`python bench/fairness_cost.py COUNT TAG [ROUNDS]` from a checkout's root, with the
project's venv: COUNT one-page jobs sent under a client name and COUNT sent
anonymously, alternating, ROUNDS times (default 2); one worker with 2 children, the
fake engine at 0.05 s a page; the client polls every 0.5 s. Prints JSON: per kind,
each round's pages/s, commands per page and INFO commandstats. It uses nothing a
checkout before the lanes lacks, so the same script measures both (bench/README.md,
"Fair shares between clients").
"""

import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, ".")

import redis  # noqa: E402
from PIL import Image  # noqa: E402

from devkit.harness import FAKE_PLUGINS, FAST_PAGES, RedisServer, Worker, make_client  # noqa: E402


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 48), 150 + n % 100).save(out, "PNG")
    return out.getvalue()


def main(count: int, tag: str, rounds: int) -> dict[str, list[dict[str, object]]]:
    folder = Path(f"/tmp/lone-{tag}")
    (folder / "redis").mkdir(parents=True, exist_ok=True)
    server = RedisServer(folder / "redis")
    server.start()
    url = server.url(3)
    worker = Worker(folder / "worker.log", {
        "REDIS_URL": url, "OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
        "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "2", "FAKE_PAGE_SECONDS": "0.05",
        **FAST_PAGES}).start(timeout=180)
    r = redis.Redis.from_url(url)
    named = make_client(url)
    named.client = "lone-client"
    anonymous = make_client(url)
    anonymous.client = ""
    runs: dict[str, list[dict[str, object]]] = {"plain": [], "lane": []}
    try:
        for _ in range(rounds):
            for mode, client in (("plain", anonymous), ("lane", named)):
                r.config_resetstat()
                started = time.perf_counter()
                jobs = [client.submit(png(n), filename=f"{n}.png") for n in range(count)]
                results = client.wait(jobs, timeout=600, poll=0.5)
                seconds = time.perf_counter() - started
                stats = r.info("commandstats")
                calls = sum(int(v["calls"]) for v in stats.values())
                assert {x["status"] for x in results.values()} == {"SUCCESS"}
                runs[mode].append({"pages_per_s": count / seconds,
                                   "commands_per_page": calls / count,
                                   "by_command": {k: int(v["calls"]) for k, v in stats.items()}})
    finally:
        worker.stop()
        server.stop()
    return runs


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2],
                          int(sys.argv[3]) if len(sys.argv) > 3 else 2)))
