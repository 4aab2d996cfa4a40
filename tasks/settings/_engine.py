"""Settings of the engine choice and of the VLM engines (mlx-vlm, vlm-api).

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._checks import DEFAULT_PROMPT
from ._field import setting as _s


@dataclass(frozen=True)
class EngineSettings:
    """Which engine a worker runs; the VLM's model, prompt, budgets, inference server and MLX."""

    engine: str = _s("OCR_ENGINE", "auto",
                     "Engine of this worker: auto (mlx-vlm when OCR_MODEL is present in "
                     "OCR_MODEL_DIR, else tesseract), tesseract, rapidocr, mlx-vlm or "
                     "vlm-api.")
    model_dir: Path = _s("OCR_MODEL_DIR", "./models",
                         "Local directory holding VLM model folders, a Hugging Face hub "
                         "cache (`models--org--name/`), or both. Never downloaded into.")
    model: str = _s("OCR_MODEL", "",
                    "Model of the mlx-vlm engine: a folder name in OCR_MODEL_DIR, a hub repo "
                    "id `org/name` (the snapshot `refs/main` points to) or `org/name@rev` "
                    "(branch, tag or commit), resolved offline.")
    prompt: str = _s("OCR_PROMPT", DEFAULT_PROMPT, "Prompt given to the VLM with each page.")
    model_profile: str = _s("OCR_MODEL_PROFILE", "",
                            "VLM model profile (prompt, page and token budget, output "
                            "normaliser): generic, olmocr, docling, deepseek-ocr, nanonets, "
                            "paddleocr-vl or dots-ocr; empty: chosen from the model folder "
                            "(config.json, folder name).")
    vlm_max_tokens: int | None = _s("OCR_VLM_MAX_TOKENS", "",
                                    "Most tokens the VLM may generate for one page; empty: "
                                    "the model profile's budget (4096, olmOCR 8000).")
    vlm_longest_side: int | None = _s("OCR_VLM_LONGEST_SIDE", "",
                                      "Longest side in pixels of the page image the VLM "
                                      "reads (never above the model processor's "
                                      "max_pixels); empty: the model profile's (1288).")
    vlm_temperatures: tuple[float, ...] = _s(
        "OCR_VLM_TEMPERATURES", "0.0,0.2",
        "Temperatures of the VLM's tries on one page: a page that ends at the token "
        "limit or in a repetition loop is read again at the next one.")
    vlm_fallback: str = _s("OCR_VLM_FALLBACK", "tesseract",
                           "Engine that reads a page the VLM left incomplete after every "
                           "try; `none`: such a page fails with code `vlm_incomplete`.")
    # Escalation: the pages the job's engine is unsure of, read again by a VLM.
    escalate_engine: str = _s("OCR_ESCALATE_ENGINE", "",
                              "Engine that reads again the pages a job's engine is unsure "
                              "of (vlm-api or mlx-vlm), for jobs that name none "
                              "(`escalate`); empty: no escalation (docs/escalation.md).")
    escalate_below: float = _s("OCR_ESCALATE_BELOW", "0.85",
                               "For jobs that give no `escalate_below`: a page whose mean "
                               "word confidence (0 to 1) is below this, or that has no text "
                               "and is not blank, is read again by the escalation engine. "
                               "At 0 none is, at 1 every OCR'd page. The default 0.85 keeps "
                               "clean scans (0.88-0.95) and sends the misread ones "
                               "(docs/escalation.md).")
    escalate_wait_seconds: float = _s("OCR_ESCALATE_WAIT_SECONDS", "600",
                                      "Seconds an escalated page may wait for its second "
                                      "reading from when it was escalated (in the "
                                      "escalation engine's queue, for its server, its "
                                      "retries); past it the page keeps its first reading "
                                      "(its `escalation` says `error` code timeout).")
    engines_from_zero: tuple[str, ...] = _s(
        "OCR_ENGINES_FROM_ZERO", "",
        "Engines served by a pool that may have no worker now (scaled from zero on its "
        "queue's depth), comma separated: jobs naming them and pages escalating to them "
        "are queued while no worker of theirs is live (docs/deploy.md).")
    # The vlm-api engine: a VLM behind an OpenAI-compatible inference server.
    vlm_api_url: str = _s("OCR_VLM_API_URL", "",
                          "Base URL of the OpenAI-compatible inference server the vlm-api "
                          "engine sends pages to (e.g. `http://127.0.0.1:8080/v1`); empty: "
                          "the Procfile's `vlm-server` (mlx_vlm.server with OCR_MODEL) on "
                          "127.0.0.1:OCR_VLM_SERVER_PORT.")
    vlm_api_model: str = _s("OCR_VLM_API_MODEL", "",
                            "Model name the inference server serves (the `model` of each "
                            "request; its model profile is chosen from it unless "
                            "OCR_MODEL_PROFILE is set); empty: OCR_MODEL.")
    vlm_api_key: str = _s("OCR_VLM_API_KEY", "",
                          "Bearer token for the inference server, if it wants one; never "
                          "logged or stored in results.", secret=True)
    vlm_api_timeout: float = _s("OCR_VLM_API_TIMEOUT", "300",
                                "Seconds one request to the inference server may take, its "
                                "whole streamed answer included (a bound, not an idle-read "
                                "limit), before it is retried as transient.")
    vlm_api_in_flight: int = _s("OCR_VLM_API_IN_FLIGHT", "64",
                                "Pages a vlm-api worker keeps in flight at the inference "
                                "server, whatever its processes: the worker runs a thread "
                                "pool of this size (OCR_CONCURRENCY overrides it). Size it "
                                "to the server's batch (docs/gpu-servers.md).")
    vlm_api_connect_timeout: float = _s("OCR_VLM_API_CONNECT_TIMEOUT", "5",
                                        "Seconds to open a connection to the inference "
                                        "server; a host that does not answer in time is "
                                        "taken for down (pages wait for it).")
    vlm_api_page_time_limit: int = _s("OCR_VLM_API_PAGE_TIME_LIMIT", "840",
                                      "Seconds a vlm-api page may take, its wait in a busy "
                                      "server's queue and every try included (replaces "
                                      "OCR_PAGE_SOFT_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT "
                                      "on a vlm-api worker); "
                                      "must stay below OCR_VISIBILITY_TIMEOUT.")
    vlm_api_retry_seconds: float = _s("OCR_VLM_API_RETRY_SECONDS", "600",
                                      "Seconds a vlm-api page keeps being retried after "
                                      "transient faults (5xx, aborted answers) and waits "
                                      "while the server is down or loading, before it "
                                      "fails with code `transient`.")
    vlm_api_probe_seconds: float = _s("OCR_VLM_API_PROBE_SECONDS", "5",
                                      "While the inference server is down or loading, "
                                      "seconds between two looks at its /v1/models or "
                                      "/health; pages wait meanwhile.")
    vlm_server_port: int = _s("OCR_VLM_SERVER_PORT", "8090",
                              "Loopback port of the Procfile's `vlm-server` process (used "
                              "when OCR_ENGINE=vlm-api and OCR_VLM_API_URL is empty).")
    mlx_memory_limit_mb: int | None = _s("OCR_MLX_MEMORY_LIMIT_MB", "",
                                         "MLX memory limit of a pool child "
                                         "(mx.set_memory_limit; on Metal also the wired "
                                         "limit), set after the model loaded; empty: MLX's.")
    mlx_cache_limit_mb: int | None = _s("OCR_MLX_CACHE_LIMIT_MB", "",
                                        "MLX buffer-cache limit of a pool child "
                                        "(mx.set_cache_limit); empty: MLX's default.")
    mlx_clear_cache: bool = _s("OCR_MLX_CLEAR_CACHE", "1",
                               "Free MLX's buffer cache after every task (task_postrun); 0 "
                               "keeps it for reuse (the memory benchmark compares both).")

    @property
    def vlm_api_base(self) -> str:
        """The inference server's base URL: OCR_VLM_API_URL, or `vlm-server` on loopback."""
        return (self.vlm_api_url or f"http://127.0.0.1:{self.vlm_server_port}/v1").rstrip("/")
