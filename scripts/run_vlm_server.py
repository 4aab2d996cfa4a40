#!/usr/bin/env python3
"""Procfile `vlm-server` process: this host's inference server for the vlm-api engine.

- OCR_ENGINE=vlm-api and OCR_VLM_API_URL empty: resolve OCR_MODEL in OCR_MODEL_DIR
  (offline, never a download) and exec `python -m mlx_vlm.server --model DIR
  --host 127.0.0.1 --port OCR_VLM_SERVER_PORT`: one copy of the model, serving every
  page the workers have in flight.
- Otherwise: say once why, then idle until stopped (scripts/supervise.py stops the
  whole service when one process exits, so an unneeded server must not just end).
- OCR_MODEL unset or not in OCR_MODEL_DIR: one line `vlm-server: vlm_server_model_missing:
  ...`, exit 2; `make run` then stops everything, as it would for any process that
  cannot start, instead of running workers whose pages no server would read.
"""

from __future__ import annotations

import os
import signal
import sys

from tasks.inference_server import offline_env, server_plan
from tasks.settings import Settings, SettingsError

EXIT_CONFIG = 2


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"vlm-server: invalid_settings: {exc}", flush=True)
        return EXIT_CONFIG
    plan = server_plan(settings)
    print(f"vlm-server: {plan.reason}", flush=True)
    if plan.action == "fail":
        return EXIT_CONFIG
    if plan.action == "idle":
        idle()
        return 0
    os.execve(plan.argv[0], list(plan.argv), offline_env())
    return 1  # not reached: execve replaces this process


def idle() -> None:
    """Wait for SIGTERM or SIGINT (the supervisor's stop), then return."""
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)


if __name__ == "__main__":
    sys.exit(main())
