"""The local RabbitMQ for tests and benchmarks: whether it runs, `rabbitmqctl`, vhosts of their own.

Runs in the test or benchmark process; the node itself is the machine's (`make test`
installs and starts Debian's `rabbitmq-server` when root).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
ACTING_USER = '<<"ocr-tests">>'  # who RabbitMQ's log says made a change


def rabbitmq_missing() -> str | None:
    """Why the local RabbitMQ cannot be used, or None when it can."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (make test installs rabbitmq-server as root)"
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2).close()
    except OSError:
        return f"no RabbitMQ listening on {RABBITMQ_HOST}:{RABBITMQ_PORT}"
    return None


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class RabbitVhost:
    """A vhost of the tests' own on the local RabbitMQ (guest/guest), deleted after."""

    def __init__(self) -> None:
        self.name = f"ocr-test-{uuid.uuid4().hex[:8]}"

    def url(self) -> str:
        return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{self.name}"

    def create(self, consumer_timeout_ms: int | None = None) -> None:
        """The vhost, guest's permissions on it and the node's consumer timeout.

        In one `rabbitmqctl eval` (what `add_vhost`, `set_permissions` and
        `set_consumer_timeout` call): each `rabbitmqctl` starts an Erlang VM of its own,
        seconds on a busy machine.
        """
        name = _binary(self.name)
        steps = [f'rabbit_vhost:add({name}, {ACTING_USER})',
                 f'rabbit_auth_backend_internal:set_permissions(<<"guest">>, {name}, '
                 f'<<".*">>, <<".*">>, <<".*">>, {ACTING_USER})']
        if consumer_timeout_ms is not None:
            steps.append(f"application:set_env(rabbit, consumer_timeout, "
                         f"{int(consumer_timeout_ms)})")
        rabbitmqctl("eval", ", ".join(steps) + ".")

    def delete(self, wait: bool = True) -> None:
        """Delete the vhost; with `wait` false, in the background (`settle_deletes`)."""
        if wait:
            rabbitmqctl("delete_vhost", self.name)
        else:
            _DELETING.append(subprocess.Popen(["rabbitmqctl", "delete_vhost", self.name],
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))

    def restart(self, down_seconds: float = 1.0) -> None:
        """Restart the RabbitMQ application (every vhost: durable queues survive)."""
        settle_deletes()  # none cut short by the stop
        rabbitmqctl("stop_app")
        time.sleep(down_seconds)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


# Deletions of vhosts still running in the background (`RabbitVhost.delete(wait=False)`).
_DELETING: list[subprocess.Popen[bytes]] = []


def settle_deletes(timeout: float = 60) -> None:
    """Wait for the background deletions of vhosts."""
    while _DELETING:
        _DELETING.pop().wait(timeout)


def set_consumer_timeout(milliseconds: int) -> None:
    """The node-wide delivery-ack timeout, for RabbitMQ before 3.11.15 (no per-queue one).

    Runtime only, like `consumer_timeout` in rabbitmq.conf but without a restart.
    """
    rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {milliseconds}).")


def _binary(text: str) -> str:
    """`text` as an Erlang binary literal (names of ours: letters, digits and dashes)."""
    if not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError(f"not a plain name: {text!r}")
    return f'<<"{text}">>'
