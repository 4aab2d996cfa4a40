#!/bin/sh
# One member of the service's replicated Redis: `start.sh redis` (a Redis server) or
# `start.sh sentinel` (a Sentinel); `start.sh handover` before a server stops (a
# Kubernetes preStop hook): a primary asks the Sentinels to promote a replica first. Used as it is by compose's `ha` profile (mounted) and
# by the Kubernetes overlay deploy/kubernetes/overlays/redis-ha (its ConfigMap holds
# this file's text; tests/deploy/test_redis_ha.py checks they are the same and runs it).
#
# Which server is the primary is the Sentinels' to say: a starting member asks each
# Sentinel; when one names a primary, a server starts as its replica (or as the primary
# when it is the one named) and a Sentinel monitors it. When none answers (a set never
# started, or every Sentinel down), SEED_HOST:SEED_PORT is taken as the primary.
#
# Environment:
#   REDIS_PASSWORD   the servers' password, and each Sentinel's own (required)
#   ANNOUNCE_HOST    this member's stable name, as the others and the clients reach it
#                    (a StatefulSet pod's DNS name, a compose service name)
#   SEED_HOST        the server that is primary when no Sentinel names one
#   SENTINELS        the Sentinels, "host:port host:port host:port"
#   MASTER_NAME      the primary's name at the Sentinels (default mymaster; the
#                    service's OCR_REDIS_SENTINEL_MASTER)
#   REDIS_PORT SEED_PORT SENTINEL_PORT  (6379, REDIS_PORT, 26379)
#   BIND             the addresses to listen on (default "* -::*")
#   DATA_DIR         a server's append-only file (default /data)
#   CONF_DIR         where the generated configuration goes (default /tmp/redis-ha)
#   QUORUM           Sentinels that must agree the primary is down (default 2)
#   DOWN_AFTER_MS    silence before a Sentinel calls a server down (default 5000)
#   EXTRA_CONFIG     more lines for a server's configuration (maxmemory, proto-max-bulk-len)
set -eu

role=${1:?usage: start.sh redis|sentinel|handover}
: "${REDIS_PASSWORD:?REDIS_PASSWORD is required}"
: "${ANNOUNCE_HOST:?ANNOUNCE_HOST is required}"
: "${SEED_HOST:?SEED_HOST is required}"
: "${SENTINELS:?SENTINELS is required}"
MASTER_NAME=${MASTER_NAME:-mymaster}
REDIS_PORT=${REDIS_PORT:-6379}
SEED_PORT=${SEED_PORT:-$REDIS_PORT}
SENTINEL_PORT=${SENTINEL_PORT:-26379}
BIND=${BIND:-* -::*}
DATA_DIR=${DATA_DIR:-/data}
CONF_DIR=${CONF_DIR:-/tmp/redis-ha}
QUORUM=${QUORUM:-2}
DOWN_AFTER_MS=${DOWN_AFTER_MS:-5000}

umask 077
mkdir -p "$CONF_DIR"
# The password in double quotes, its backslashes and quotes escaped (a config file,
# never a command line: it does not show in a process list); written with printf, as
# sh's echo would take its backslashes for escapes.
quoted=$(printf '%s' "$REDIS_PASSWORD" | sed 's/[\\"]/\\&/g')
export REDISCLI_AUTH="$REDIS_PASSWORD"

# The primary a Sentinel names, "host port"; nothing when none answers.
named_primary() {
  for sentinel in $SENTINELS; do
    answer=$(redis-cli --raw -h "${sentinel%:*}" -p "${sentinel##*:}" \
      SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null) || continue
    host=$(printf '%s\n' "$answer" | sed -n 1p)
    port=$(printf '%s\n' "$answer" | sed -n 2p)
    case $port in ''|*[!0-9]*) continue ;; esac
    echo "$host $port"
    return 0
  done
}

if [ "$role" = handover ]; then
  redis-cli -p "$REDIS_PORT" INFO replication 2>/dev/null | grep -q '^role:master' || exit 0
  for sentinel in $SENTINELS; do
    redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" SENTINEL failover "$MASTER_NAME" \
      >/dev/null 2>&1 && break
  done
  tries=0  # until this server is a replica, for at most 30 s
  while [ $tries -lt 30 ] && redis-cli -p "$REDIS_PORT" INFO replication 2>/dev/null \
      | grep -q '^role:master'; do
    sleep 1
    tries=$((tries + 1))
  done
  exit 0
fi

primary=$(named_primary || true)
if [ -z "$primary" ]; then
  primary="$SEED_HOST $SEED_PORT"
fi
primary_host=${primary% *}
primary_port=${primary#* }

case $role in
redis)
  mkdir -p "$DATA_DIR"
  {
    echo "bind $BIND"
    echo "port $REDIS_PORT"
    echo "dir \"$DATA_DIR\""
    echo "appendonly yes"
    echo "appendfsync everysec"
    echo 'save ""'
    echo "maxmemory-policy noeviction"
    printf '%s "%s"\n' "requirepass" "$quoted"
    printf '%s "%s"\n' "masterauth" "$quoted"
    echo "replica-announce-ip $ANNOUNCE_HOST"
    echo "replica-announce-port $REDIS_PORT"
    # No min-replicas-to-write: the service asks for its replicas itself (WAIT,
    # OCR_REDIS_MIN_REPLICAS) and takes a missing one as a retryable `transient`, where
    # Redis's NOREPLICAS would fail any write, the ending of a job included.
    printf '%s\n' "${EXTRA_CONFIG:-}"
    if [ "$primary_host" != "$ANNOUNCE_HOST" ] || [ "$primary_port" != "$REDIS_PORT" ]; then
      echo "replicaof $primary_host $primary_port"
    fi
  } > "$CONF_DIR/redis.conf"
  exec redis-server "$CONF_DIR/redis.conf"
  ;;
sentinel)
  {
    echo "bind $BIND"
    echo "port $SENTINEL_PORT"
    echo "dir \"$CONF_DIR\""
    printf '%s "%s"\n' "requirepass" "$quoted"
    printf '%s "%s"\n' "sentinel sentinel-pass" "$quoted"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $ANNOUNCE_HOST"
    echo "sentinel announce-port $SENTINEL_PORT"
    echo "sentinel monitor $MASTER_NAME $primary_host $primary_port $QUORUM"
    printf '%s "%s"\n' "sentinel auth-pass $MASTER_NAME" "$quoted"
    echo "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS"
    echo "sentinel failover-timeout $MASTER_NAME 60000"
    echo "sentinel parallel-syncs $MASTER_NAME 1"
  } > "$CONF_DIR/sentinel.conf"
  exec redis-server "$CONF_DIR/sentinel.conf" --sentinel
  ;;
*)
  echo "start.sh: unknown role $role (redis, sentinel or handover)" >&2
  exit 2
  ;;
esac
