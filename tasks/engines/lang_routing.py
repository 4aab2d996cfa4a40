"""Which engine reads a job that names a language but no engine (OCR_LANG_ENGINES).

Runs in worker pool children, where the job is already taken: `ResidentEngines.for_job`
asks `routed_engine` and loads the answer beside the worker's own engine. Routing in
the worker (not in the client at submit) means a routed job never waits on a queue no
worker consumes: it stays on the queue it was sent to (`ocr`), and a worker without
the routed engine installed reads it with its own engine.

`served_engines` names the engines a worker runs: its own and each engine its routing
can load here. A worker that takes jobs naming no engine consumes their queues too
(`ocr-<engine>`: `tasks.queue.routing.worker_queues`), so a job that *names* such an
engine reaches it, as a routed one does.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from tasks.engines import engine_class
from tasks.errors import OcrError

if TYPE_CHECKING:
    from tasks.settings import Settings


def served_engines(primary: str, settings: Settings) -> list[str]:
    """The engines a worker of engine `primary` runs: `primary`, then OCR_LANG_ENGINES's.

    A routing target counts when this worker knows it and it is installed here (as
    `routed_engine` requires); its load happens in the pool child on first use.
    """
    served = [primary]
    for name in dict.fromkeys(settings.lang_engine_map.values()):
        if name in served:
            continue
        try:
            if engine_class(name, settings).installed(settings):
                served.append(name)
        except OcrError:
            continue  # an engine this worker does not know
    return served


def routed_engine(lang: str | None, primary: str, settings: Settings,
                  failed: Collection[str] = ()) -> str:
    """The engine for a job of language set `lang` without `engine`; `primary` otherwise.

    The first code of `lang` that OCR_LANG_ENGINES names decides; its engine is used
    when it is installed here, has not failed to load here (`failed`) and reads every
    code of `lang` (`chi_sim+eng` goes to rapidocr, `chi_sim+vie` stays on `primary`).
    """
    if not lang:
        return primary
    table = settings.lang_engine_map
    codes = lang.split("+")
    name = next((table[code] for code in codes if code in table), None)
    if name is None or name == primary or name in failed:
        return primary
    try:
        cls = engine_class(name, settings)
    except OcrError:
        return primary  # an engine this worker does not know (validated, but plugins vary)
    reads = cls.languages(settings)
    if not cls.installed(settings) or (reads is not None and
                                       any(code not in reads for code in codes)):
        return primary
    return name
