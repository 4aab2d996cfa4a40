"""The Redis HA harness stops what it started when its start fails.

A fixture whose setup raises is never torn down: a `RedisHA` that started its nodes and
Sentinels and then failed (the Sentinels not agreeing in time on a loaded host) left
five redis-servers running after its test. Real processes, a failure forced in the
Sentinels' agreement check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.ha import RedisHA


class NeverAgreeing(RedisHA):
    def _sentinels_agree(self) -> bool:
        raise RuntimeError("the Sentinels disagree (forced)")


def test_a_failed_start_stops_every_node_and_sentinel(tmp_path: Path) -> None:
    ha = NeverAgreeing(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="forced"):
            ha.start()
        assert len(ha.nodes) == 3 and len(ha.sentinels) == 3  # all of them had started
        assert all(node.proc is not None and node.proc.poll() is not None
                   for node in ha.nodes)
        assert all(proc.poll() is not None for proc in ha.sentinels)
    finally:
        ha.stop()  # this test leaves nothing running, whatever it found
