"""Operator commands over the queue: model audits, unloading, languages, live queues.

Runs in operator processes (`submit.py models|langs`, and `submit.py`'s check for a
live worker on a job's queue) beside an `OcrClient`, whose send-only app it uses:
remote-control broadcasts and the maintenance tasks are sent by name. Only
`audit_every_host` imports the maintenance module (and through it the model audit) to
address one worker per host.
"""

from __future__ import annotations

from typing import Any

from kombu.utils.uuid import uuid

from tasks.client import OcrClient


class OperatorConsole:
    """The operator's view of the cluster, through a client's app and result backend."""

    def __init__(self, client: OcrClient) -> None:
        self.client = client

    def audit_models(self, *, prune: bool = False, dry_run: bool = False,
                     timeout: float | None = None) -> dict[str, Any]:
        """Run the model-directory audit `ocr.audit_models` through the queue.

        Returns its report (docs/tasks.md), or a FAILURE/TIMEOUT dict like `wait()`.
        """
        job = self.client.app.send_task("ocr.audit_models",
                                 kwargs={"prune": prune, "dry_run": dry_run})
        return self.client.wait([str(job.id)], timeout=timeout)[str(job.id)]

    def audit_every_host(self, *, prune: bool = False, dry_run: bool = False,
                         timeout: float | None = None) -> dict[str, Any]:
        """Audit the model directory of every host: one worker per (host, directory).

        Returns `{"run", "hosts": [report, ...] (docs/tasks.md, sorted by host),
        "failed": [FAILURE/TIMEOUT dicts]}`; no live worker gives empty lists.
        """
        from tasks.queue.maintenance_tasks import dispatch_every_host  # worker-side module

        run = uuid()
        targets = dispatch_every_host(self.client.app, run, prune, dry_run)
        results = self.client.wait([t["task_id"] for t in targets], timeout=timeout)
        hosts, failed = [], []
        for target in targets:
            result = results[target["task_id"]]
            if "models" in result:
                hosts.append(result)
            elif not result.get("skipped"):
                failed.append({**result, "host": target["host"],
                               "model_dir": target["model_dir"]})
        return {"run": run, "hosts": hosts, "failed": failed}

    def unload_models(self, timeout: float = 2.0,
                      destination: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Broadcast the remote-control command `unload_model`; replies by worker."""
        replies = self.client.app.control.broadcast("unload_model", reply=True, timeout=timeout,
                                             destination=destination)
        merged: dict[str, dict[str, Any]] = {}
        for reply in replies or []:
            merged.update(reply)
        return merged

    def live_queues(self) -> dict[str, set[str]]:
        """The queues each live worker consumes, by node name.

        From the workers' presence records (tasks/state/liveness.py: one Redis read, no
        broadcast), the same answer the HTTP API's readiness gives.
        """
        return self.client.live_queues()

    def languages(self, timeout: float = 1.0) -> dict[str, dict[str, Any]]:
        """The languages of every worker that answers within `timeout`, by worker node.

        Each reply: `{"engine": ..., "default": "eng", "languages": ["chi_sim", ...]}`
        (`languages` is None for an engine that takes no `lang`, such as mlx-vlm).
        """
        replies = self.client.app.control.broadcast("languages", reply=True, timeout=timeout)
        merged: dict[str, dict[str, Any]] = {}
        for reply in replies or []:
            merged.update(reply)
        return merged
