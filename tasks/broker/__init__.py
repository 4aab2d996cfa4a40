r"""The Redis broker: kombu's transport with atomic fetches, lanes, doorbells and dead letters.

Who runs what:

- every process that publishes (clients, the API, beat, workers sending page tasks and
  retries): `transport.Channel._put` (a client's message to its lane, `lanes.push_command`)
  and the doorbell's ring; behind Sentinel through `sentinel_transport`.
- the worker parent, the one process that consumes: the fetch (`lanes.FETCH_SCRIPT`,
  recorded and popped in one step), the wait on doorbells, the checks and dead letters
  (`refusals`, `bounded_reply`), acknowledgements and what a lost connection leaves
  (`unsettled`).
- the Procfile `metrics` process: `queue_depth` (the figure KEDA scales on) and
  `fleet_metrics` (Redis health, oldest messages, workers per queue, dead letters).
- the Redis container's start-up and the kits: `redis_acl` (each role's Redis user).

The key layout, owned by `layout` (nothing else spells these names):

    key                              type    written by            read by
    -------------------------------  ------  --------------------  ---------------------
    <queue>, <queue>\x06\x16<step>   list    a publish without a   the fetch, queue depth
      (one per priority step 3,6,9)            client (kombu LPUSH)
    ocr:lane:<list>:<client>         list    a client's publish    the fetch, queue depth
    ocr:lanes:<step>                 list    push (joins the ring) the fetch (its order)
    ocr:lanes:<step>:turn            hash    the fetch             the fetch
    ocr:lanes:<step>:count           hash    push +1, fetch -1     the fetch
    ocr:lane-weights                 hash    the API's tokens      the fetch
    unacked                          hash    the fetch (tag ->     acks, restores, queue
                                              [msg, exch, rkey])    depth's running count
    unacked_index                    zset    the fetch (tag->time) kombu's restore sweep
    unacked_mutex                    string  kombu's restore       kombu's restore
    ocr:wake:<queue>                 list    each publish (1 item) idle workers' BLPOP
    ocr:dead-letter[:count]          list    refused messages      the exporter, operators
    _kombu.binding.<exchange>        set     queue declares        routing, queue depth

Private kombu names this package overrides or calls, checked against kombu
`KOMBU_VERSION` (tests/units/test_kombu_overrides.py fails when either changes):

- `Channel._connparams`: a released connection raises ConnectionError (kombu's restore
  would raise AttributeError, an "Unrecoverable error"); replies read by `bounded_reply`.
- `Channel._put`: a client's message to its lane; every publish stamps its time and
  rings the doorbell.
- `Channel._do_restore_message`: a restored client's message back to its lane.
- `Channel._size`: queue_declare's count includes the lanes.
- `Channel._brpop_start` / `_brpop_read` / `_poll_error`: the fetch script instead of
  BRPOP (recorded and popped atomically), or a BLPOP on the doorbells; `_admit` before
  delivery. They use kombu's `_in_poll`, `_queue_cycle`, `_q_for_pri`,
  `_flush_brpop_reauth`, `_get_message_priority` and `connection._deliver`.
- `Channel._get`: basic_get checks each message (`_admit`) before decoding it.
- `Channel._deliver_fanout_message`: broadcasts checked; a refused one dead-lettered.
- `Channel.supports_batch_publish`: off, so each publish rings its doorbell.
- `Channel.from_transport_options`: the `ocr_*` transport options.
- `QoS.append`: a message the fetch recorded is not recorded twice.
- `QoS.ack` / `reject` / `restore_unacked`: what fails with the connection is settled by
  the next channel (`unsettled`); they call `_remove_from_indices`, `_delivered`.
- `SentinelChannel._sentinel_managed_pool`: the Sentinels of `ocr_sentinels`, not the
  URL's parts (kombu would switch to its own transport on a failover).

redis-py's private `_RESP2Parser`, `_RESP3Parser` and `SocketBuffer` are subclassed by
`bounded_reply` (checked against redis-py `REDIS_PY_VERSION`).
"""

KOMBU_VERSION = "5.7.0"
REDIS_PY_VERSION = "8.1.0"

# class -> the private (or behaviour-defining) names of it that this package overrides
# or relies on; each must exist on kombu's class.
KOMBU_OVERRIDES: dict[str, tuple[str, ...]] = {
    "Channel": ("_connparams", "_put", "_do_restore_message", "_size", "_brpop_start",
                "_brpop_read", "_poll_error", "_get", "_deliver_fanout_message",
                "supports_batch_publish", "from_transport_options", "basic_consume",
                "close", "_q_for_pri", "_flush_brpop_reauth",
                "_get_message_priority", "_maybe_update_queues_expire", "_in_poll",
                "priority_steps", "unacked_key", "unacked_index_key",
                "global_keyprefix", "sep", "keyprefix_queue"),
    "QoS": ("append", "ack", "reject", "restore_unacked", "restore_by_tag",
            "_remove_from_indices", "unacked_key"),
    "SentinelChannel": ("_sentinel_managed_pool", "from_transport_options", "connection_class",
                        "connection_class_ssl"),
    "Transport": ("Channel", "connection_errors", "brpop_timeout", "polling_interval"),
}
