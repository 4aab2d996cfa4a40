"""The service's one Lua runner (tasks/state/lua.py): by SHA, loaded where the server lacks it.

Alone, in a pipeline and in a MULTI, on a server that lost its scripts (a restart, a
failover), the script runs once; a read-only one too (EVALSHA_RO, or EVAL_RO). A lost
script's error is both the NOSCRIPT the broker raises and a retryable `transient` error.
"""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import NoScriptError

from tasks.errors import TransientError
from tasks.state import lua
from tests.losing_redis import losing_redis

ADD = lua.Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
READ = lua.Script("return redis.call('GET', KEYS[1])")


def test_a_script_runs_once_alone_in_a_pipeline_and_in_a_multi_on_a_server_that_lost_it(
        own_redis_url: str) -> None:
    client = redis.Redis.from_url(own_redis_url)
    assert ADD.run(client, ["n"], [1]) == 1
    client.script_flush()
    assert ADD.run(client, ["n"], [1]) == 2
    client.script_flush()
    pipe = client.pipeline(transaction=False)
    pipe.set("other", "1")
    ADD.queue(pipe, ["n"], [1])
    assert lua.execute(pipe) == [True, 3]
    client.script_flush()
    with client.pipeline() as multi:  # its load in the transaction, one answer more
        ADD.queue(multi, ["n"], [1])
        assert multi.execute() == [ADD.sha.encode(), 4]
    assert client.get("n") == b"4"


def test_a_script_lost_as_often_as_it_is_loaded_is_a_noscript_and_transient(
        own_redis_url: str) -> None:
    client = losing_redis(own_redis_url)
    client.script_flush()
    client.losses = lua.LOADS + 1  # a first load of its pool, then LOADS
    with pytest.raises(lua.ScriptLost) as lost:
        ADD.run(client, ["lost"], [1])
    assert isinstance(lost.value, NoScriptError) and isinstance(lost.value, TransientError)
    assert lost.value.retryable and lost.value.code == "transient"
    assert client.get("lost") is None


def test_a_read_only_script_runs_by_evalsha_ro_and_by_eval_ro_where_the_server_lacks_it(
        own_redis_url: str) -> None:
    client = redis.Redis.from_url(own_redis_url)
    client.set("seen", "7")
    client.script_flush()
    assert READ.run_read_only(client, ["seen"]) == b"7"  # EVAL_RO: cached by the server
    assert client.script_exists(READ.sha) == [True]
    assert READ.run_read_only(client, ["seen"]) == b"7"
