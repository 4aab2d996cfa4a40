"""CPU of the RESP bytes packed by hand against redis-py's packer (docs/scaling.md, "Lua scripts").

`python bench/resp_packing.py` from a checkout's root, with the project's venv. Times,
in this process and without a server, the two commands whose repeated parts the
service keeps packed: a worker's fetch (tasks/broker/wire.py), over the lists of a
worker serving `ocr` and `ocr-control` at four priority steps, and a waiting client's
look at its jobs' notices (tasks/state/job_notices.py), over 1, 20 and 400 jobs. Prints
JSON: microseconds a command, each way.
"""

import json
import sys
import time
import timeit

sys.path.insert(0, ".")

from redis.connection import Connection  # noqa: E402

from tasks.broker import fetch_script, layout  # noqa: E402
from tasks.broker.wire import FetchBytes  # noqa: E402
from tasks.state.keys import job_notice_key  # noqa: E402
from tasks.state.resp import resp  # noqa: E402

STEPS = (0, 3, 6, 9)
JOBS = (1, 20, 400)


def fetch_us(connection: Connection) -> dict[str, float]:
    """A fetch packed by hand and by redis-py, in microseconds."""
    lists = tuple((layout.queue_list(queue, step), step, queue == "ocr", True)
                  for step in STEPS for queue in ("ocr", "ocr-control"))
    parts = fetch_script.fetch_parts("", lists, 0)
    tail = fetch_script.fetch_tail(True, False, "host-1:123", None, [], [])
    packed, now, n = FetchBytes(), repr(time.time()), 20000
    by_hand = timeit.timeit(lambda: packed.fetch(connection.encoder, parts, now, tail),
                            number=n) / n
    by_redis_py = timeit.timeit(
        lambda: connection.pack_command(*parts[0], now, *parts[1], *tail), number=n) / n
    return {"arguments": len(parts[0]) + 1 + len(parts[1]) + len(tail),
            "by_hand": by_hand * 1e6, "by_redis_py": by_redis_py * 1e6}


def look_us(connection: Connection, jobs: int) -> dict[str, float]:
    """A look over `jobs` jobs' notices packed by hand and by redis-py, in microseconds."""
    encoder = connection.encoder
    ids = [f"job-{i:04d}-0123456789abcdef" for i in range(jobs)]
    names = {job: resp(encoder, (job_notice_key(job),)) for job in ids}
    head = ["XREAD", "BLOCK", 20000, "STREAMS"]

    def by_hand() -> bytes:
        return b"".join([b"*%d\r\n" % (len(head) + 2 * len(ids)), resp(encoder, head),
                         *(names[job] for job in ids), resp(encoder, ("0",)) * len(ids)])

    def by_redis_py() -> list[bytes]:
        return connection.pack_command(*head, *(job_notice_key(job) for job in ids),
                                       *(["0"] * len(ids)))

    n = max(200, 200000 // jobs)
    return {"jobs": jobs, "by_hand": timeit.timeit(by_hand, number=n) / n * 1e6,
            "by_redis_py": timeit.timeit(by_redis_py, number=n) / n * 1e6}


if __name__ == "__main__":
    connection = Connection()
    print(json.dumps({"fetch": fetch_us(connection),
                      "look": [look_us(connection, jobs) for jobs in JOBS]}, indent=1))
