#!/bin/sh
# One member of the service's replicated Redis: `start.sh redis` (a Redis server) or
# `start.sh sentinel` (a Sentinel); `start.sh handover` before a server stops (a
# Kubernetes preStop hook): a primary asks the Sentinels to promote a replica first.
# Used as it is by compose's `ha` profile and by the Kubernetes overlay
# deploy/kubernetes/overlays/redis-ha (its ConfigMap holds this file's text;
# tests/deploy/test_redis_ha.py checks they are the same and runs it).
#
# Which server is the primary is the Sentinels' to say: a starting member asks each
# Sentinel; when one names a primary, a server starts as its replica (or as the primary
# when it is the one named) and a Sentinel monitors it. When none answers (a set never
# started, or every Sentinel down), SEED_HOST:SEED_PORT is taken as the primary.
#
# Two modes. Locked (SENTINEL_AUTH_PASSWORD set; the kits): the servers know the users
# of tasks/redis_users.py, one per role plus `replica` and `sentinel`, from
# USERS_FILE (`python -m scripts.redis_acl --replicated` writes it; `default` off); a
# replica logs in to its primary as `replica`, a Sentinel to the servers as
# `sentinel`, and the Sentinels ask their own password. Plain (REDIS_PASSWORD): one
# password for every server and Sentinel. With TLS_DIR (or TLS_CA), servers and
# Sentinels speak only TLS, to their clients and to each other.
#
# Environment:
#   SENTINEL_AUTH_PASSWORD  locked mode: the `sentinel` user's password
#   SENTINEL_PASSWORD       locked mode: the Sentinels' own (OCR_REDIS_SENTINEL_PASSWORD)
#   USERS_FILE       locked mode, a server: its `user` lines (included in its config)
#   REPLICA_PASSWORD locked mode, a server: the `replica` user's password
#   REDIS_PASSWORD   plain mode: the servers' password, and each Sentinel's own
#   TLS_DIR          TLS only: its tls.crt, tls.key (this member's) and ca.crt; or
#   TLS_CERT TLS_KEY TLS_CA  the three files named one by one
#   ANNOUNCE_HOST    this member's stable name, as the others and the clients reach it
#                    (a StatefulSet pod's DNS name, a compose service name); with TLS,
#                    a name the certificate carries
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
USERS_FILE=${USERS_FILE:-}
TLS_DIR=${TLS_DIR:-}
TLS_CERT=${TLS_CERT:-${TLS_DIR:+$TLS_DIR/tls.crt}}
TLS_KEY=${TLS_KEY:-${TLS_DIR:+$TLS_DIR/tls.key}}
TLS_CA=${TLS_CA:-${TLS_DIR:+$TLS_DIR/ca.crt}}

# A value in double quotes, its backslashes and quotes escaped (a config file, never a
# command line: it does not show in a process list); written with printf, as sh's echo
# would take its backslashes for escapes.
quote() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}

if [ -n "${SENTINEL_AUTH_PASSWORD:-}" ]; then  # locked
  : "${SENTINEL_PASSWORD:?SENTINEL_PASSWORD is required with SENTINEL_AUTH_PASSWORD}"
  if [ "$role" = redis ]; then
    : "${USERS_FILE:?USERS_FILE is required with SENTINEL_AUTH_PASSWORD}"
    : "${REPLICA_PASSWORD:?REPLICA_PASSWORD is required with SENTINEL_AUTH_PASSWORD}"
  fi
  server_user=sentinel  # what this script reads of a server: INFO replication
  server_password=$SENTINEL_AUTH_PASSWORD
  sentinels_password=$SENTINEL_PASSWORD
else
  : "${REDIS_PASSWORD:?REDIS_PASSWORD (or SENTINEL_AUTH_PASSWORD) is required}"
  USERS_FILE=
  server_user=default
  server_password=$REDIS_PASSWORD
  sentinels_password=$REDIS_PASSWORD
fi

# redis-cli over TLS where the members speak it; the password from the environment
# (REDISCLI_AUTH), never on a command line.
cli() {
  if [ -n "$TLS_CA" ]; then
    redis-cli --tls --cacert "$TLS_CA" "$@"
  else
    redis-cli "$@"
  fi
}
# This server's replication role and link (INFO replication), as $server_user.
server_info() {
  REDISCLI_AUTH="$server_password" cli --user "$server_user" -p "$REDIS_PORT" \
    INFO replication 2>/dev/null
}
# A command to the Sentinel at "host:port" ($1), with the Sentinels' own password.
sentinel_cli() {
  address=$1
  shift
  REDISCLI_AUTH="$sentinels_password" cli --raw -h "${address%:*}" -p "${address##*:}" "$@"
}

# The primary the Sentinels name, "host port": the answer most of those that answer
# give (one Sentinel that has not yet heard of a failover is outvoted); nothing when
# none answers.
named_primary() {
  answers=
  for sentinel in $SENTINELS; do
    answer=$(sentinel_cli "$sentinel" SENTINEL get-master-addr-by-name "$MASTER_NAME" \
      2>/dev/null) || continue
    host=$(printf '%s\n' "$answer" | sed -n 1p)
    port=$(printf '%s\n' "$answer" | sed -n 2p)
    case $port in ''|*[!0-9]*) continue ;; esac
    answers="$answers$host $port
"
  done
  [ -n "$answers" ] || return 0
  printf '%s' "$answers" | sort | uniq -c | sort -rn | sed -n '1s/^ *[0-9]* //p'
}

if [ "$role" = handover ]; then
  server_info | grep -q '^role:master' || exit 0
  for sentinel in $SENTINELS; do
    sentinel_cli "$sentinel" SENTINEL failover "$MASTER_NAME" >/dev/null 2>&1 && break
  done
  tries=0  # until this server is a replica, for at most 30 s
  while [ $tries -lt 30 ] && server_info | grep -q '^role:master'; do
    sleep 1
    tries=$((tries + 1))
  done
  exit 0
fi

umask 077
mkdir -p "$CONF_DIR"
primary=$(named_primary || true)
if [ -z "$primary" ]; then
  primary="$SEED_HOST $SEED_PORT"
fi
primary_host=${primary% *}
primary_port=${primary#* }

# Listening: plain, or TLS only (no plaintext port); clients need no certificate of
# their own (each has a user and password) and check this one against the CA.
listen() {
  echo "bind $BIND"
  if [ -n "$TLS_CA" ]; then
    echo "port 0"
    echo "tls-port $1"
    echo "tls-cert-file \"$TLS_CERT\""
    echo "tls-key-file \"$TLS_KEY\""
    echo "tls-ca-cert-file \"$TLS_CA\""
    echo "tls-auth-clients no"
    echo "tls-replication yes"
  else
    echo "port $1"
  fi
}

case $role in
redis)
  mkdir -p "$DATA_DIR"
  {
    listen "$REDIS_PORT"
    echo "dir \"$DATA_DIR\""
    echo "appendonly yes"
    echo "appendfsync everysec"
    echo 'save ""'
    echo "maxmemory-policy noeviction"
    if [ -n "$USERS_FILE" ]; then
      echo "include \"$USERS_FILE\""
      echo "masteruser replica"
      printf 'masterauth %s\n' "$(quote "$REPLICA_PASSWORD")"
    else
      printf 'requirepass %s\n' "$(quote "$REDIS_PASSWORD")"
      printf 'masterauth %s\n' "$(quote "$REDIS_PASSWORD")"
    fi
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
    listen "$SENTINEL_PORT"
    echo "dir \"$CONF_DIR\""
    printf 'requirepass %s\n' "$(quote "$sentinels_password")"
    printf 'sentinel sentinel-pass %s\n' "$(quote "$sentinels_password")"
    echo "sentinel resolve-hostnames yes"
    echo "sentinel announce-hostnames yes"
    echo "sentinel announce-ip $ANNOUNCE_HOST"
    echo "sentinel announce-port $SENTINEL_PORT"
    echo "sentinel monitor $MASTER_NAME $primary_host $primary_port $QUORUM"
    if [ -n "${SENTINEL_AUTH_PASSWORD:-}" ]; then
      echo "sentinel auth-user $MASTER_NAME sentinel"
      printf 'sentinel auth-pass %s %s\n' "$MASTER_NAME" "$(quote "$SENTINEL_AUTH_PASSWORD")"
    else
      printf 'sentinel auth-pass %s %s\n' "$MASTER_NAME" "$(quote "$REDIS_PASSWORD")"
    fi
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
