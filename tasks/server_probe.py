"""The one answer to "is the inference server up?": `GET <base>/models`, within a timeout.

Every OpenAI-compatible server answers it (mlx_vlm.server, vLLM, SGLang, LM Studio,
Ollama). Asked by the vlm-api engine's server gate while the server is down (worker
threads, tasks/engines/vlm/vlm_api_engine.py), and, through tasks/inference_server.py,
by the API's /readyz and `submit.py` in client processes: so the standard library only
(no openai, numpy or PIL import), and outside tasks/engines (a client imports no engine
module: tests/clients/test_cli.py).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.settings import Settings

CHECK_TIMEOUT = 2.0  # seconds a readiness check waits for the server's answer


@dataclass(frozen=True)
class ServerCheck:
    """The answer of `GET <base>/models`: `ok`, or why not in `detail` (safe to show)."""

    url: str
    ok: bool
    detail: str = ""

    @property
    def message(self) -> str:
        return "" if self.ok else \
            f"the inference server at {self.url} does not answer ({self.detail})"


def check_server(settings: Settings, timeout: float = CHECK_TIMEOUT) -> ServerCheck:
    """Ask the inference server for its models (OpenAI's `GET /models`), `timeout` s.

    Every OpenAI-compatible server answers it (mlx_vlm.server, vLLM, SGLang, LM Studio,
    Ollama). The bearer token goes in the header when set; it never appears in `detail`.
    """
    base = settings.vlm_api_base
    request = urllib.request.Request(f"{base}/models", method="GET")
    if settings.vlm_api_key:
        request.add_header("Authorization", f"Bearer {settings.vlm_api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            status = answer.status
    except urllib.error.HTTPError as exc:
        return ServerCheck(base, False, f"HTTP {exc.code} to GET /models")
    except urllib.error.URLError as exc:
        reason = exc.reason
        return ServerCheck(base, False, type(reason).__name__ if isinstance(
            reason, BaseException) else str(reason)[:200])
    except (TimeoutError, OSError) as exc:  # a read timeout, a reset mid-answer
        return ServerCheck(base, False, type(exc).__name__)
    except ValueError:  # a URL urllib cannot use (the settings check the scheme)
        return ServerCheck(base, False, "not a usable URL")
    if status != 200:
        return ServerCheck(base, False, f"HTTP {status} to GET /models")
    return ServerCheck(base, True)
