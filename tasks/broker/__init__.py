r"""The Redis broker: kombu's transport with atomic fetches, lanes, doorbells and dead letters.

Who runs what:

- every process that publishes (clients, the API, beat, workers sending page tasks and
  retries): the channel of `publishing` (a client's message to its lane,
  `lanes.push_command`, and the doorbell's ring, `doorbells`), which the worker's
  channel of `transport` extends; behind Sentinel through `sentinel_transport`.
- the worker parent, the one process that consumes: the fetch (`lanes.FETCH`,
  recorded with its holder and popped in one step; idle, one EXISTS), the long wait on
  doorbells (`ocr_idle_wait`, 10 s in workers), the checks and dead letters
  (`refusals`, `oversized`), acknowledgements and what a lost connection leaves
  (`unsettled`), and, on its heartbeat, the sweep of dead holders' messages (`holders`).
- the Procfile `metrics` process: `queue_depth` (the figure KEDA scales on) and
  `fleet_metrics` (Redis health, oldest messages, workers per queue, dead letters).
- the Redis container's start-up and the kits: `redis_acl` (each role's Redis user).
- the worker parent as it starts: `stored_layout` (the layout version this Redis
  holds: stored where none is; a newer one than this release reads stops the worker).

Every script of the broker is a `scripts.Script`, sent as EVALSHA and loaded (SCRIPT
LOAD) by each process before its first run on a pool, and again where the server
answers NOSCRIPT (a restart, a failover). kombu's client with a
global key prefix prefixes an EVALSHA's first key itself (`scripts.keyed` reads its
`global_keyprefix`). No script reads the envelope: the fetch records a message under a
delivery tag the worker chose, as `[message, "", queue]` (kombu's restore sends it back
to the queue it came from); records the previous fetch wrote (the envelope's tag,
exchange and routing key) are acknowledged and restored alike.

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
                                              [msg, "", queue])     depth's running count
    unacked_index                    zset    the fetch (tag->time) kombu's restore sweep
    unacked_mutex                    string  kombu's restore       kombu's restore
    unacked_holders                  hash    the fetch (tag ->     the holders' sweep;
                                              holder, src, ring,    dropped with the
                                              client)               unacked record
    unacked_sweep                    string  the holders' sweep    the holders' sweep
                                              (SET NX PX lock)
    ocr:workers (tasks/state)        hash    heartbeats (node ->   the holders' sweep
                                              expires, pid)
    ocr:wake:<queue>                 list    each publish and      idle workers' BLPOP
                                              restore (1 item)
    ocr:dead-letter[:count]          list    refused messages      the exporter, operators
    _kombu.binding.<exchange>        set     queue declares        routing, queue depth
    ocr:layout                       string  the first worker to   each worker's start
                                              start (SET NX: 1)     (`stored_layout`)

Private kombu names this package overrides or calls, read against each kombu minor of
`KOMBU_MINORS`, requirements.txt's range (tests/units/test_kombu_overrides.py checks the
installed kombu is one, and has each name; `SINCE_KOMBU_5_7` are only in 5.7, and are
called only where kombu has them).
`Channel` is `transport.Channel` with the `publishing.PublishingChannel` it extends,
which holds `_put`, `_do_restore_message`, `_size` and `supports_batch_publish`:

- `Channel._connparams`: a released connection raises ConnectionError (kombu's restore
  would raise AttributeError, an "Unrecoverable error").
- `Channel._put`: a client's message to its lane; every publish stamps its time and
  rings the doorbell.
- `Channel._do_restore_message`: a restored client's message back to its lane; every
  restore rings its queues' doorbells (idle workers wait long).
- `Channel._size`: queue_declare's count includes the lanes.
- `Channel._brpop_start` / `_brpop_read` / `_poll_error`: the fetch script instead of
  BRPOP (recorded and popped atomically), or a BLPOP on the doorbells; `_admit` before
  delivery. They use kombu's `_in_poll`, `_queue_cycle`, `_flush_brpop_reauth` and
  `connection._deliver`; a message's list is named by `layout` (`message_step`,
  `queue_list`), not by kombu's private helpers.
- `Channel._get`: basic_get pops by a script (`oversized.POP`, bounded as the fetch) and
  checks each message (`_admit`) before decoding it.
- `Channel.basic_consume`: a broadcast queue's callback (kombu's `connection._callbacks`,
  `_fanout_queues`) checks each broadcast first; a refused one dead-lettered.
- `Channel.supports_batch_publish`: off, so each publish rings its doorbell.
- `Channel.from_transport_options`: the `ocr_*` transport options; `ocr_idle_wait` sets
  `brpop_timeout` (the doorbell's BLPOP and kombu's BRPOP health check).
- `QoS.append`: a message the fetch recorded is not recorded twice.
- `QoS.restore_visible`: one read of `unacked_index` first; kombu's mutex and restore
  only when a message is past the visibility timeout (an idle worker's cost).
- `QoS.ack` / `reject` / `restore_unacked`: what fails with the connection is settled by
  the next channel (`unsettled`); they call `_remove_from_indices`, `_delivered`.
  `restore_unacked` drops the holders of the tasks still running (a warm stop). In the
  worker's event loop an acknowledgement rides on the channel's next fetch
  (`Channel.fetch_follows`: the fetch script drops its record first, one round trip a
  task); `Transport.register_with_event_loop` (kombu's hook) names the loop's thread.
- `QoS._remove_from_indices`: the message's holder goes in the same MULTI.
- `SentinelChannel._sentinel_managed_pool`: the Sentinels of `ocr_sentinels`, not the
  URL's parts (kombu would switch to its own transport on a failover).

No name of redis-py's is overridden, and only its public API is called: a message
longer than the worker's bound (`ocr_max_message_bytes`) is cut on the server by the
scripts that pop it for a worker (the fetch and `Channel._get`'s: `oversized`), which
send its first and last bytes and its length, never its body. Nothing else hands a
worker a whole message from Redis: kombu's restore reads `unacked` records (HGET), and
only messages within the bound are recorded (the fetch records none larger, and
`QoS.append` only a message `_admit` took); the holders' sweep returns
delivery tags; a broadcast (PUBLISH: remote control) comes on kombu's pubsub
connection, and Redis's `client-output-buffer-limit pubsub` bounds it (by default a
subscriber whose pending output passes 32 MB is disconnected instead of sent it).
"""

# The kombu minors (and celery's, which go with them) whose Redis transport the names
# below were read against: requirements.txt's range, whose two ends `make test-floor`
# and `make test` run.
KOMBU_MINORS = ("5.6", "5.7")
# Names of KOMBU_OVERRIDES that only kombu 5.7 has: on 5.6 the step they take does not
# exist (no batch publish, re-auth or queue expiry), and they are not called.
SINCE_KOMBU_5_7: dict[str, tuple[str, ...]] = {
    "Channel": ("supports_batch_publish", "_flush_brpop_reauth",
                "_maybe_update_queues_expire"),
}

# class -> the private (or behaviour-defining) names of it that this package overrides
# or relies on; each must exist on kombu's class.
KOMBU_OVERRIDES: dict[str, tuple[str, ...]] = {
    "Channel": ("_connparams", "_put", "_do_restore_message", "_size", "_brpop_start",
                "_brpop_read", "_poll_error", "_get", "supports_batch_publish",
                "from_transport_options", "basic_consume", "close",
                "_flush_brpop_reauth", "_fanout_queues",
                "_maybe_update_queues_expire", "_in_poll",
                "priority_steps", "unacked_key", "unacked_index_key",
                "global_keyprefix", "sep", "keyprefix_queue"),
    "QoS": ("append", "ack", "reject", "restore_unacked", "restore_visible", "restore_by_tag",
            "_remove_from_indices", "unacked_key"),
    "SentinelChannel": ("_sentinel_managed_pool", "from_transport_options", "connection_class",
                        "connection_class_ssl"),
    "Transport": ("Channel", "connection_errors", "brpop_timeout", "polling_interval",
                  "_callbacks", "register_with_event_loop"),
}
