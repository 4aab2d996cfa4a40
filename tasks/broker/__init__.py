r"""The Redis broker: our own kombu transport, with atomic fetches, lanes, wake-ups, dead letters.

The transport (`transport.Transport`, registered as `ocr-redis`: Celery's
`broker_transport`) is built on kombu's virtual transport, not on kombu's Redis
transport, which nothing here imports. Its channel (`channel.Channel`) is composed of a
publisher (`publishing`), a fetcher (`fetching`), its broadcasts (`broadcasts`) and the
QoS (`qos`); `poller` drives the channels' sockets. Where each module runs and what it
holds: its docstring, and docs/architecture.md's module table.

Every script of the broker runs through the service's one Lua runner
(tasks/state/lua.py). No key carries a global prefix (the transport refuses
`global_keyprefix`: a service has its own database or ACL user). No script reads the
envelope: a taken message is held in one record, under a delivery tag the worker
chose (`unacked`). Layout version 3: every key beside a list L takes L as its hash tag
(`{L}:...`, in L's own slot). Redis Cluster is not supported: one fetch touches several
slots (docs/scaling.md).

The key layout, owned by `layout` (nothing else spells these names):

    key                              type    written by            read by
    -------------------------------  ------  --------------------  ---------------------
    <queue>, <queue>\x06\x16<step>   list    a publish without a   the fetch, queue depth
      (one per priority step 3,6,9)            client (kombu LPUSH)
    {<list>}:lane:<client>           list    a client's publish    the fetch, queue depth
    {<list>}:ring                    list    push (joins the ring) the fetch (its order)
    {<list>}:ring:turn               hash    the fetch             the fetch
    {<list>}:ring:count              hash    push +1, fetch -1     the fetch
    ocr:lane-weights                 hash    the API's tokens      the fetch
    {<list>}:held                    hash    the fetch (tag ->     acks (one HDEL), the
                                              time, holder, src,    restores, the holders'
                                              ring, client; then    sweep, queue depth's
                                              [msg, "", queue])     running count
    ocr:held-lists                   set     a worker's first      the sweep (drops the
                                              record of a list,     empty), the look,
                                              again every minute    queue depth
    unacked_mutex                    string  the visibility look   the visibility look
                                              (SET NX PX: one a     (a worker's, every 5 s
                                              fleet an interval)    while one is held)
    unacked_sweep                    string  the holders' sweep    the holders' sweep
                                              (SET NX PX lock)
    ocr:workers (tasks/state)        hash    heartbeats (node ->   the holders' sweep,
                                              expires, pid, layout) the migration
    {<queue>}:wake                   list    each publish and      idle workers' BLPOP
                                              restore (1 item)
    ocr:dead-letter[:count]          list    refused messages      the exporter, operators
    _kombu.binding.<exchange>        set     queue declares        routing, queue depth
    _kombu.binding_permanent.<ex.>   set     declares of queues    the sweeps: kept
                                              without x-expires
    _kombu.binding_expiry            zset    declares of queues    the sweep of dead
                                              with x-expires, and   ones (`binding_expiry`)
                                              their consumers
    _kombu.binding_deadlines         zset    the same (exchange    stock kombu 5.7
                                              -> deadline)          clients' sweep
    ocr:layout                       string  the first worker to   each worker's start
                                              start (SET NX: 3 on   (`stored_layout`)
                                              a new Redis), the
                                              migration

The names of kombu's virtual transport it overrides or relies on are `KOMBU_HOOKS`,
read against each kombu minor of `KOMBU_MINORS`, requirements.txt's range
(tests/units/test_kombu_overrides.py checks the installed kombu is one, has each name,
and that no other name of kombu's is overridden). Most are the hooks kombu documents
for a transport to fill in (`_get`, `_put`, `_size`, `_purge`, `_delete`, `_has_queue`,
`_new_queue`, `_queue_bind`, `get_table`, `_put_fanout`, `register_with_event_loop`,
and `prepare_queue_arguments`, kombu's base channel's, which turns `Queue(expires=...)`
into x-expires as kombu's own transports do);
`KOMBU_PRIVATE_READS` are the few private names of the virtual
transport it reads or calls without overriding them.

Of redis-py, one name is overridden (`REDIS_HOOKS`): a watched connection's
`_connect`, the hook redis-py's own SSL and Unix-socket connections override, keeps the
socket the poller watches. No private name of redis-py's is read, and otherwise only
its public API is called. No message
longer than the worker's bound (`ocr_max_message_bytes`) reaches a worker whole: the
scripts that pop one send its ends and its length (`oversized`), only messages within
the bound are held (`unacked`), and a broadcast (PUBLISH: remote control) comes on the
channel's PUB/SUB connection, which Redis's `client-output-buffer-limit pubsub` bounds
(by default a subscriber whose pending output passes 32 MB is disconnected instead of
sent it).
"""

# The kombu minors (and celery's, which go with them) whose virtual transport the names
# below were read against: requirements.txt's range, whose two ends `make test-floor`
# and `make test` run.
KOMBU_MINORS = ("5.6", "5.7")

# kombu.transport.virtual class -> the names of it that this package overrides (each
# must exist on kombu's class; no other of its names is overridden).
KOMBU_HOOKS: dict[str, tuple[str, ...]] = {
    "Channel": ("QoS", "supports_fanout", "from_transport_options", "_get", "_put",
                "_size", "_purge", "_delete", "_has_queue", "_new_queue", "get_table",
                "basic_consume", "basic_cancel", "close", "prepare_queue_arguments"),
    "QoS": ("append", "ack", "reject", "restore_unacked", "restore_visible",
            "restore_at_shutdown"),
    "Transport": ("Channel", "polling_interval", "default_port", "driver_type",
                  "driver_name", "implements", "connection_errors", "channel_errors",
                  "driver_version", "register_with_event_loop"),
}
# Hooks kombu's virtual transport calls where a channel has them, with no default of its
# own (a channel with `supports_fanout`: a binding's note, a fanout publish).
KOMBU_FILLED_HOOKS: dict[str, tuple[str, ...]] = {
    "Channel": ("_queue_bind", "_put_fanout"),
}
# Private names of kombu's virtual transport read or called, never overridden.
# redis-py's connection hooks a watched connection overrides (tasks/broker/connections.py).
REDIS_HOOKS = ("_connect",)
KOMBU_PRIVATE_READS: dict[str, tuple[str, ...]] = {
    "Channel": ("_lookup", "_tag_to_queue", "_active_queues"),
    "QoS": ("_delivered",),
}
