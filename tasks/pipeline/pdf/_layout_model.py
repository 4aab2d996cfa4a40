"""PyMuPDF's layout model in this process: its ONNX sessions' threads.

Runs in worker pool children, called by tasks/pipeline/structure.py before a layout
analysis. Part of tasks/pipeline/pdf, the only package that imports `pymupdf`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# (pid, threads) the layout model's sessions were last built for in this process.
_built: tuple[int, int] | None = None
# The sessions replaced: kept, never destroyed here, as a pool child inherited them from
# its parent with ONNX Runtime threads that do not exist in the child.
_retired: list[Any] = []


def use_layout_threads(threads: int) -> None:
    """The layout model's ONNX sessions, rebuilt once in this process with `threads`.

    PyMuPDF builds them when it is imported (in the worker's parent, before the pool
    forks) with ONNX Runtime's default, an intra-op thread per core, and offers no
    option: each session the model holds (the layout GNN, the image features, the table
    grid: found by walking the model's attributes) is replaced by one of the same model
    file, with `threads` intra-op threads (not spinning), one inter-op thread and
    PyMuPDF's own setting (no memory arena). Done again only in another process or
    for another count.
    """
    global _built
    if _built == (os.getpid(), threads):
        return
    import onnxruntime as ort
    import pymupdf

    model = next((cell.cell_contents for cell in
                  getattr(pymupdf._get_layout, "__closure__", None) or ()), None)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Threads that wait for work sleep instead of spinning: with 2 spinning threads a
    # child took 38 % more CPU for the same pages than with 1 (tracemonkey, 14 pages).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rebuilt = 0
    for owner, name, session in _sessions(model, ort.InferenceSession):
        _retired.append(session)
        setattr(owner, name, ort.InferenceSession(
            session._model_path, sess_options=options, providers=session.get_providers()))
        rebuilt += 1
    if not rebuilt:
        log.warning("no layout model sessions found: their threads are left as they are")
    _built = (os.getpid(), threads)


def _sessions(root: Any, kind: type, depth: int = 3,
              seen: set[int] | None = None) -> list[tuple[Any, str, Any]]:
    """(owner, attribute, session) for each `kind` held in `root`'s attributes, once."""
    seen = set() if seen is None else seen
    found: list[tuple[Any, str, Any]] = []
    if id(root) in seen or not hasattr(root, "__dict__"):
        return found
    seen.add(id(root))
    for name, value in list(vars(root).items()):
        if isinstance(value, kind):
            found.append((root, name, value))
        elif depth and hasattr(value, "__dict__") and not isinstance(value, type):
            found += _sessions(value, kind, depth - 1, seen)
    return found


def session_threads() -> list[int]:
    """The intra-op threads of each layout session in this process (0: ORT's default)."""
    import onnxruntime as ort
    import pymupdf

    model = next((cell.cell_contents for cell in
                  getattr(pymupdf._get_layout, "__closure__", None) or ()), None)
    return [session.get_session_options().intra_op_num_threads
            for _, _, session in _sessions(model, ort.InferenceSession)]
