#!/usr/bin/env bash
# Local database servers for imstore's tests, on loopback only.
#
#   scripts/servers.sh start   [postgres|cassandra|ferretdb ...]
#   scripts/servers.sh stop    [postgres|cassandra|ferretdb ...]
#   scripts/servers.sh restart [postgres|cassandra|ferretdb ...]
#   scripts/servers.sh status  [postgres|cassandra|ferretdb ...]
#   scripts/servers.sh kill    [postgres|cassandra|ferretdb ...]
#   scripts/servers.sh cluster start|stop|status|ring|kill N|start-node N
#     (a 3-node Cassandra cluster on 127.0.0.2-4: see its section below)
#
# `kill` sends SIGKILL to the server (a crash, for fault tests: no shutdown,
# no flush) and waits until the process is gone; `start` brings it back on
# its existing data.
#
# With no names, all three. `start` installs what is missing (PostgreSQL from
# Debian's packages, Cassandra's jars with Maven, FerretDB built with Go),
# starts what is not running, waits until each accepts connections and writes
# .servers/env, to be sourced by tests:
#
#   IMSTORE_POSTGRES_URL  PostgreSQL 15+ (Debian's), database "imstore"
#   IMSTORE_SCYLLA_NODES  Apache Cassandra 5.0 single node (CQL)
#   IMSTORE_MONGODB_URL   FerretDB v1 (MongoDB wire protocol, SQLite storage)
#
# It is idempotent: a server already up (pid file alive AND its port
# answering) is left alone, so a second `start` returns at once; a server that
# was killed is started again on its existing data. `status` exits 0 only
# when every named server is up.
#
# State lives in .servers/ at the repository root (git-ignored); downloads and
# builds are cached in ${IMSTORE_CACHE_DIR:-~/.cache/imstore}, Maven's local
# repository (~/.m2, or IMSTORE_M2_REPO) and Go's module and build caches.
#
# Settings (environment):
#   IMSTORE_PG_PORT=55432
#   IMSTORE_CQL_PORT=19042  IMSTORE_CASSANDRA_STORAGE_PORT=17000
#   IMSTORE_CASSANDRA_JMX_PORT=17199  IMSTORE_CASSANDRA_HEAP=1G
#   IMSTORE_CASSANDRA_VERSION=5.0.9
#   IMSTORE_CASSANDRA_PAXOS=v1 (paxos_variant of the nodes: v1, Cassandra's default, or v2)
#   IMSTORE_MONGO_PORT=37017  IMSTORE_FERRETDB_DEBUG_PORT=37018
#   IMSTORE_FERRETDB_VERSION=v1.24.2
#   IMSTORE_FERRETDB_HANDLER=postgresql (FerretDB's storage: a database `ferretdb`
#     in the PostgreSQL above, which `start ferretdb` therefore starts too; or
#     `sqlite`, files in .servers/ferretdb/data)
#   IMSTORE_JAVA_HOME (default: Java 17)
#   IMSTORE_START_TIMEOUT_{POSTGRES,CASSANDRA,FERRETDB} (seconds)
set -euo pipefail

# CI may hand over a minimal environment.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
HELPERS=$ROOT/scripts/servers
STATE=$ROOT/.servers
CACHE=${IMSTORE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/imstore}

PG_PORT=${IMSTORE_PG_PORT:-55432}
PG_DB=imstore
PG_ROLE=imstore
PG_PASSWORD=imstore

CQL_PORT=${IMSTORE_CQL_PORT:-19042}
CASS_STORAGE_PORT=${IMSTORE_CASSANDRA_STORAGE_PORT:-17000}
CASS_JMX_PORT=${IMSTORE_CASSANDRA_JMX_PORT:-17199}
CASS_HEAP=${IMSTORE_CASSANDRA_HEAP:-1G}
CASS_VERSION=${IMSTORE_CASSANDRA_VERSION:-5.0.9}
CASS_PAXOS=${IMSTORE_CASSANDRA_PAXOS:-v1}

MONGO_PORT=${IMSTORE_MONGO_PORT:-37017}
FDB_DEBUG_PORT=${IMSTORE_FERRETDB_DEBUG_PORT:-37018}
FDB_VERSION=${IMSTORE_FERRETDB_VERSION:-v1.24.2}
# PostgreSQL by default: FerretDB v1 pushes filters and sorts down to it and its
# indexes are PostgreSQL indexes, where over SQLite every find scans the
# collection (the MongoDB suite ran about 5x faster; backends/mongodb/README.md).
FDB_HANDLER=${IMSTORE_FERRETDB_HANDLER:-postgresql}
FDB_PG_DB=ferretdb

TIMEOUT_PG=${IMSTORE_START_TIMEOUT_POSTGRES:-60}
TIMEOUT_CASS=${IMSTORE_START_TIMEOUT_CASSANDRA:-240}
TIMEOUT_FDB=${IMSTORE_START_TIMEOUT_FERRETDB:-30}

ALL_SERVERS=(postgres cassandra ferretdb)

# Toolchains installed outside the default PATH on these machines.
for d in /usr/local/go/bin "$HOME/go/bin"; do
  if [[ -d $d && :$PATH: != *:$d:* ]]; then PATH=$PATH:$d; fi
done
export PATH

log() { printf '[servers] %s\n' "$*" >&2; }
die() { printf '[servers] error: %s\n' "$*" >&2; exit 1; }

FAILED=()
# fail NAME REASON [LOGFILE...]: report a server that did not come up.
fail() {
  local name=$1 reason=$2 f
  shift 2
  FAILED+=("$name")
  printf '[servers] %s FAILED: %s\n' "$name" "$reason" >&2
  for f in "$@"; do
    if [[ -s $f ]]; then
      printf '[servers] ---- last 40 lines of %s ----\n' "$f" >&2
      tail -n 40 "$f" >&2
      printf '[servers] ---- end of %s ----\n' "$f" >&2
    fi
  done
}

is_root() { [[ $EUID -eq 0 ]]; }

# ---------------------------------------------------------------- helpers --

apt_updated=0
apt_install() {
  is_root || die "need to install $* but not running as root; install them and retry"
  command -v apt-get >/dev/null || die "need to install $* but apt-get is missing"
  log "installing $* with apt-get"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; then
    if [[ $apt_updated -eq 0 ]]; then
      apt_updated=1
      DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >&2
    else
      return 1
    fi
  fi
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# port_free PORT: wait up to 15 s for nothing to listen on PORT. The socket
# of a server killed a moment ago lingers while its process is torn down.
port_free() {
  local deadline=$((SECONDS + 15))
  while port_open "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# port_listeners PORT: the `ss` lines of sockets listening on PORT.
port_listeners() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null || true
}

# pid_matching PIDFILE PATTERN: print the pid from PIDFILE if that process is
# alive and its command line contains PATTERN (guards against reused pids).
pid_matching() {
  local pidfile=$1 pattern=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(head -n 1 "$pidfile" 2>/dev/null | tr -d '[:space:]')
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# launched PIDFILE: the process a launcher started in the background (its pid
# in PIDFILE) is still alive, whether or not it has exec'd the server yet: just
# after the fork /proc/PID/cmdline is still the launching subshell's, so
# pid_matching takes a server about to start for one that exited (FerretDB was
# reported "exited during startup" while it came up, on a loaded machine).
launched() {
  local pid
  pid=$(head -n 1 "$1" 2>/dev/null | tr -d '[:space:]')
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid"
}

# alive PID: PID exists and has not exited. A zombie (state Z or X in
# /proc/PID/stat) has exited but still answers `kill -0`. Its empty cmdline is
# no test: inside execve the cmdline also reads empty for a moment, between the
# switch to the new image and the setup of its arguments, and a poll that
# lands there took a starting FerretDB for one that exited.
alive() {
  local pid=$1 stat
  kill -0 "$pid" 2>/dev/null || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # The state follows the command name, which is in parentheses and may hold
  # spaces or parentheses itself: take what follows the last ") ".
  stat=${stat##*) }
  [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# owns_port PID PORT: PID is the process listening on PORT (true when ss
# cannot tell, e.g. without root and for another user's process).
owns_port() {
  local pid=$1 port=$2 lines
  lines=$(port_listeners "$port")
  [[ -z $lines || $lines != *pid=* || $lines == *"pid=$pid,"* ]]
}

# wait_gone PID SECONDS: wait for PID to exit; false if still alive after.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# stop_pid NAME PID SECONDS: TERM, wait, then KILL.
stop_pid() {
  local name=$1 pid=$2 grace=$3
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! wait_gone "$pid" "$grace"; then
    log "$name did not stop within ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || true
  fi
}

# --------------------------------------------------------------- postgres --

PG_BIN=
PG_USER=
PG_HOME=   # real directory holding data/, postgres.log and imstore.conf
PG_DATA=
PG_LOG=

pg_find_bin() {
  local ver d dirs
  PG_BIN=
  # Prefer the major version the data directory was made with.
  if [[ -n $PG_DATA && -s $PG_DATA/PG_VERSION ]]; then
    ver=$(<"$PG_DATA/PG_VERSION")
    [[ -x /usr/lib/postgresql/$ver/bin/postgres ]] && PG_BIN=/usr/lib/postgresql/$ver/bin && return 0
  fi
  mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  for d in "${dirs[@]}"; do
    if [[ -x $d/postgres && -x $d/initdb && -x $d/pg_ctl ]]; then PG_BIN=$d; return 0; fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
    [[ -x $d/postgres ]] && PG_BIN=$d && return 0
  fi
  return 1
}

# Decide where the data lives and which OS user runs the server. PostgreSQL
# refuses to run as root, so as root it runs as the `postgres` user, which
# must be able to reach the data directory. If the clone sits below a
# directory that user cannot enter (e.g. /root), the data goes to
# /var/lib/imstore/postgres-<hash of this clone's path> and .servers/postgres
# is a symlink to it.
pg_layout() {
  local link=$STATE/postgres
  if ! is_root; then
    PG_USER=$(id -un)
    PG_HOME=$link
  else
    if id postgres >/dev/null 2>&1; then
      PG_USER=postgres
    elif id imstore >/dev/null 2>&1; then
      PG_USER=imstore
    else
      log "creating system user imstore to run PostgreSQL"
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imstore
      PG_USER=imstore
    fi
    if [[ -L $link ]]; then
      PG_HOME=$(readlink -f "$link")
    elif [[ -d $link ]]; then
      PG_HOME=$link
    elif runuser -u "$PG_USER" -- test -x "$STATE" 2>/dev/null; then
      PG_HOME=$link
    else
      PG_HOME=/var/lib/imstore/postgres-$(printf '%s' "$STATE" | sha256sum | cut -c1-12)
    fi
  fi
  PG_DATA=$PG_HOME/data
  PG_LOG=$PG_HOME/postgres.log
}

# as_pg CMD...: run CMD as the PostgreSQL OS user, from a directory it can enter.
# Fd 9 (the lock) is closed so the postmaster doesn't hold it forever.
as_pg() {
  if is_root; then
    (cd "$PG_HOME" && runuser -u "$PG_USER" -- "$@" 9>&-)
  else
    (cd "$PG_HOME" && "$@" 9>&-)
  fi
}

pg_pid() { pid_matching "$PG_DATA/postmaster.pid" "$PG_DATA"; }

pg_up() {
  local pid
  pid=$(pg_pid) || return 1
  port_open "$PG_PORT" && owns_port "$pid" "$PG_PORT"
}

pg_psql() {
  PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
    -U "$PG_ROLE" "$@"
}

pg_write_conf() {
  # Regenerated on every start so the settings below always apply.
  cat >"$PG_DATA/imstore.conf" <<EOF
# Written by scripts/servers.sh on every start; included from postgresql.conf.
listen_addresses = '127.0.0.1'
port = $PG_PORT
# No Unix socket: clients use TCP, and long clone paths can't break it.
unix_socket_directories = ''
# The conformance tests open many connection pools at once.
max_connections = 300
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  if is_root; then chown "$PG_USER": "$PG_DATA/imstore.conf"; fi
  chmod 600 "$PG_DATA/imstore.conf"
}

pg_start() {
  pg_layout
  if pg_up; then
    log "postgres already up (pid $(pg_pid), 127.0.0.1:$PG_PORT)"
    return 0
  fi
  if ! pg_find_bin; then
    apt_install postgresql || { fail postgres "apt-get install postgresql failed"; return 0; }
    pg_find_bin || { fail postgres "no PostgreSQL binaries found after installing postgresql"; return 0; }
  fi

  # .servers/ was wiped but the out-of-tree data of an earlier run remains:
  # start from scratch, as the wipe asked.
  if is_root && [[ $PG_HOME != "$STATE/postgres" && ! -L $STATE/postgres && -e $PG_HOME ]]; then
    log "discarding stale PostgreSQL data in $PG_HOME (its .servers/postgres link is gone)"
    if [[ -s $PG_DATA/postmaster.pid ]] && pg_pid >/dev/null; then
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_HOME"
  fi

  mkdir -p "$PG_HOME"
  if [[ $PG_HOME != "$STATE/postgres" && ! -L $STATE/postgres ]]; then
    ln -s "$PG_HOME" "$STATE/postgres"
  fi
  if is_root; then chown "$PG_USER": "$PG_HOME"; fi
  chmod 700 "$PG_HOME"

  if ! port_free "$PG_PORT"; then
    fail postgres "port 127.0.0.1:$PG_PORT is already in use by another process: $(port_listeners "$PG_PORT")"
    return 0
  fi

  if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    log "initialising PostgreSQL data directory $PG_DATA ($PG_BIN)"
    rm -rf "$PG_DATA"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_ROLE" --auth=trust -E UTF8 --no-locale \
      >"$PG_HOME/initdb.log" 2>&1; then
      fail postgres "initdb failed" "$PG_HOME/initdb.log"
      return 0
    fi
    printf "\ninclude_if_exists = 'imstore.conf'\n" >>"$PG_DATA/postgresql.conf"
  fi
  pg_write_conf

  log "starting postgres on 127.0.0.1:$PG_PORT"
  local attempt ok=0
  # After a kill -9, pg_ctl clears the stale postmaster.pid itself, but the
  # old server's children may hold its shared memory for a moment: retry.
  for attempt in 1 2 3 4 5; do
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT_PG" start >>"$PG_HOME/pg_ctl.log" 2>&1; then
      ok=1
      break
    fi
    pg_pid >/dev/null && break # running but not ready in time: don't start twice
    log "postgres did not start (attempt $attempt; after a kill its old processes may still be exiting); retrying"
    sleep 2
  done
  if [[ $ok -ne 1 ]] || ! pg_up; then
    fail postgres "pg_ctl start did not bring it up within ${TIMEOUT_PG}s" "$PG_HOME/pg_ctl.log" "$PG_LOG"
    return 0
  fi

  # The database and a password (trust auth ignores it; clients that send one work).
  if ! pg_psql -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    pg_psql -d postgres -c "CREATE DATABASE $PG_DB" >&2 || { fail postgres "CREATE DATABASE failed" "$PG_LOG"; return 0; }
  fi
  pg_psql -d "$PG_DB" -c "ALTER ROLE $PG_ROLE PASSWORD '$PG_PASSWORD'" >/dev/null ||
    { fail postgres "setting the role's password failed" "$PG_LOG"; return 0; }
  log "postgres up (pid $(pg_pid))"
}

pg_stop() {
  pg_layout
  local pid
  if ! pid=$(pg_pid); then
    log "postgres not running"
    return 0
  fi
  pg_find_bin || die "postgres is running (pid $pid) but no pg_ctl was found"
  log "stopping postgres (pid $pid)"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null || stop_pid postgres "$pid" 10
  fi
}

pg_status() {
  pg_layout
  local pid
  if pid=$(pg_pid); then
    if port_open "$PG_PORT"; then
      printf '%-10s up       pid %-8s 127.0.0.1:%-6s data %s\n' postgres "$pid" "$PG_PORT" "$PG_DATA"
      return 0
    fi
    printf '%-10s starting pid %-8s 127.0.0.1:%-6s (port not answering yet)\n' postgres "$pid" "$PG_PORT"
    return 1
  fi
  printf '%-10s down%s\n' postgres "$(port_note "$PG_PORT")"
  return 1
}

# port_note PORT: remark for `status` when a down server's port is taken.
port_note() {
  if port_open "$1"; then printf '     (port %s is held by another process!)' "$1"; fi
}

# -------------------------------------------------------------- cassandra --

CASS_DIR=$STATE/cassandra
CASS_PIDFILE=$CASS_DIR/cassandra.pid
CASS_LOGS=$CASS_DIR/logs
CASS_LIB=$CACHE/cassandra-$CASS_VERSION/lib
JAVA=

# jvm_options GLOB: the flags of jvm17.options on lines matching GLOB, into the
# array JVM_OPTS ("--add-opens x=y" is one flag written as two words).
jvm_options() {
  JVM_OPTS=()
  local words=() line
  while IFS= read -r line; do
    # shellcheck disable=SC2053 # $1 is a glob on purpose
    [[ $line == $1 ]] || continue
    read -r -a words <<<"$line"
    JVM_OPTS+=("${words[@]}")
  done <"$HELPERS/cassandra/jvm17.options"
}

cass_pid() { pid_matching "$CASS_PIDFILE" "-Dcassandra.config=file://$CASS_DIR/conf/cassandra.yaml"; }

cass_up() {
  local pid
  pid=$(cass_pid) || return 1
  port_open "$CQL_PORT" && owns_port "$pid" "$CQL_PORT"
}

find_java17() {
  local c
  for c in "${IMSTORE_JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-* /usr/lib/jvm/*-17-*; do
    if [[ -n $c && -x $c/bin/java ]]; then JAVA=$c/bin/java; return 0; fi
  done
  return 1
}

cass_fetch_lib() {
  [[ -f $CASS_LIB/.complete ]] && return 0
  if ! command -v mvn >/dev/null; then apt_install maven || return 1; fi
  local tmp=$CASS_LIB.tmp.$$ m2=()
  [[ -n ${IMSTORE_M2_REPO:-} ]] && m2=("-Dmaven.repo.local=$IMSTORE_M2_REPO")
  log "fetching cassandra-all $CASS_VERSION and its dependencies with Maven into $CASS_LIB"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$CASS_LOGS"
  if ! JAVA_HOME=$(dirname "$(dirname "$JAVA")") mvn -B -ntp "${m2[@]}" \
    -f "$HELPERS/cassandra/pom.xml" -Dcassandra.version="$CASS_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
    </dev/null >"$CASS_LOGS/maven.log" 2>&1; then
    rm -rf "$tmp"
    return 1
  fi
  compgen -G "$tmp/jamm-*.jar" >/dev/null || { rm -rf "$tmp"; return 1; }
  touch "$tmp/.complete"
  rm -rf "$CASS_LIB"
  mv "$tmp" "$CASS_LIB"
}

# Start the JVM and return without waiting (cass_wait waits), so the other
# servers start while Cassandra boots.
CASS_LAUNCHED=0
cass_launch() {
  if cass_up; then
    log "cassandra already up (pid $(cass_pid), 127.0.0.1:$CQL_PORT)"
    return 0
  fi
  mkdir -p "$CASS_LOGS" "$CASS_DIR/conf" "$CASS_DIR/data"
  local pid
  if pid=$(cass_pid); then
    # Alive but the CQL port isn't open yet: still booting; just wait for it.
    log "cassandra already starting (pid $pid)"
    CASS_LAUNCHED=1
    return 0
  fi
  if ! find_java17; then
    if ! { apt_install openjdk-17-jre-headless && find_java17; }; then
      fail cassandra "no Java 17 found (set IMSTORE_JAVA_HOME)"
      return 0
    fi
  fi
  if ! cass_fetch_lib; then
    fail cassandra "Maven could not fetch cassandra-all $CASS_VERSION" "$CASS_LOGS/maven.log"
    return 0
  fi
  local p
  for p in "$CQL_PORT" "$CASS_STORAGE_PORT" "$CASS_JMX_PORT"; do
    if ! port_free "$p"; then
      fail cassandra "port 127.0.0.1:$p is already in use by another process: $(port_listeners "$p")"
      return 0
    fi
  done

  local yaml
  yaml=$(<"$HELPERS/cassandra/cassandra.yaml.in")
  yaml=${yaml//@DATA@/$CASS_DIR/data}
  yaml=${yaml//@STORAGE_PORT@/$CASS_STORAGE_PORT}
  yaml=${yaml//@CQL_PORT@/$CQL_PORT}
  yaml=${yaml//@PAXOS@/$CASS_PAXOS}
  printf '%s\n' "$yaml" >"$CASS_DIR/conf/cassandra.yaml"
  cp "$HELPERS/cassandra/logback.xml" "$CASS_DIR/conf/logback.xml"

  local jamm opts
  jvm_options '-*'
  opts=("${JVM_OPTS[@]}")
  jamm=$(compgen -G "$CASS_LIB/jamm-*.jar" | head -n 1)

  log "starting cassandra $CASS_VERSION on 127.0.0.1:$CQL_PORT (logs in $CASS_LOGS)"
  rm -f "$CASS_PIDFILE"
  (
    cd "$CASS_DIR"
    exec 9>&- # don't hand the lock to the server
    exec setsid "$JAVA" -Xms"$CASS_HEAP" -Xmx"$CASS_HEAP" "${opts[@]}" \
      -XX:ErrorFile="$CASS_LOGS/hs_err_pid%p.log" \
      -javaagent:"$jamm" \
      -Dcassandra.config="file://$CASS_DIR/conf/cassandra.yaml" \
      -Dcassandra-foreground=yes \
      -Dcassandra.logdir="$CASS_LOGS" \
      -Dlogback.configurationFile="$CASS_DIR/conf/logback.xml" \
      -Dcassandra.skip_wait_for_gossip_to_settle=0 \
      -Dcassandra.ring_delay_ms=0 \
      -Dcassandra.load_ring_state=false \
      -Dcassandra.jmx.local.port="$CASS_JMX_PORT" \
      -Dcom.sun.management.jmxremote.rmi.port="$CASS_JMX_PORT" \
      -cp "$CASS_LIB/*" org.apache.cassandra.service.CassandraDaemon \
      </dev/null >>"$CASS_LOGS/console.log" 2>&1
  ) &
  echo "$!" >"$CASS_PIDFILE"
  CASS_LAUNCHED=1
}

cass_wait() {
  [[ $CASS_LAUNCHED -eq 1 ]] || return 0
  local deadline=$((SECONDS + TIMEOUT_CASS)) pid
  while ! cass_up; do
    if ! launched "$CASS_PIDFILE"; then
      fail cassandra "the JVM exited during startup" "$CASS_LOGS/console.log" "$CASS_LOGS/system.log"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      pid=$(head -n 1 "$CASS_PIDFILE" | tr -d '[:space:]')
      fail cassandra "CQL port 127.0.0.1:$CQL_PORT not open after ${TIMEOUT_CASS}s (pid $pid still running)" \
        "$CASS_LOGS/console.log" "$CASS_LOGS/system.log"
      return 0
    fi
    sleep 1
  done
  log "cassandra up (pid $(cass_pid))"
}

cass_stop() {
  local pid
  if pid=$(cass_pid); then
    # TERM runs Cassandra's shutdown hook, which drains memtables.
    stop_pid cassandra "$pid" 90
  else
    log "cassandra not running"
  fi
  rm -f "$CASS_PIDFILE"
}

cass_status() {
  local pid
  if pid=$(cass_pid); then
    if port_open "$CQL_PORT"; then
      printf '%-10s up       pid %-8s 127.0.0.1:%-6s data %s\n' cassandra "$pid" "$CQL_PORT" "$CASS_DIR/data"
      return 0
    fi
    printf '%-10s starting pid %-8s 127.0.0.1:%-6s (CQL port not open yet)\n' cassandra "$pid" "$CQL_PORT"
    return 1
  fi
  printf '%-10s down%s\n' cassandra "$(port_note "$CQL_PORT")"
  return 1
}

# --------------------------------------------------------------- ferretdb --

FDB_DIR=$STATE/ferretdb
FDB_PIDFILE=$FDB_DIR/ferretdb.pid
FDB_LOG=$FDB_DIR/ferretdb.log
FDB_HOME=$CACHE/ferretdb-$FDB_VERSION
FDB_BIN=$FDB_HOME/ferretdb

# Both storages run with the state dir of this clone, so it names our process.
fdb_pid() { pid_matching "$FDB_PIDFILE" "--state-dir=$FDB_DIR/state"; }

fdb_up() {
  local pid
  pid=$(fdb_pid) || return 1
  port_open "$MONGO_PORT" && owns_port "$pid" "$MONGO_PORT"
}

# FerretDB v1 from the Go module proxy. `go install` of it builds a binary
# that panics at start: build/version/version.txt is generated from git and
# is not in the module zip. So copy the module source, write that file, build.
fdb_build() {
  [[ -x $FDB_BIN ]] && return 0
  mkdir -p "$FDB_DIR"
  command -v go >/dev/null || { echo "the Go toolchain (go) is not installed" >"$FDB_DIR/build.log"; return 1; }
  local dir src
  mkdir -p "$FDB_HOME"
  log "building FerretDB $FDB_VERSION with $(go version) (a few minutes on a cold cache)"
  {
    dir=$(cd "$FDB_HOME" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$FDB_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || return 1
    [[ -n $dir && -d $dir ]] || { echo "go mod download gave no module directory"; return 1; }
    src=$FDB_HOME/src.$$
    rm -rf "$src"
    cp -r "$dir" "$src"
    chmod -R u+w "$src"
    printf '%s\n' "$FDB_VERSION" >"$src/build/version/version.txt"
    (cd "$src" && GOFLAGS="-buildvcs=false" go build -trimpath -o "$FDB_BIN.tmp" ./cmd/ferretdb) || { rm -rf "$src"; return 1; }
    rm -rf "$src"
    mv "$FDB_BIN.tmp" "$FDB_BIN"
  } </dev/null >"$FDB_DIR/build.log" 2>&1
}

# A cold build takes minutes of CPU: begin it before the other servers'
# downloads and start-up, and let fdb_start wait for it.
FDB_BUILD_PID=
fdb_build_async() {
  [[ -x $FDB_BIN ]] && return 0
  fdb_up && return 0
  fdb_build 9>&- &
  FDB_BUILD_PID=$!
}

fdb_start() {
  if fdb_up; then
    log "ferretdb already up (pid $(fdb_pid), 127.0.0.1:$MONGO_PORT)"
    return 0
  fi
  mkdir -p "$FDB_DIR/data" "$FDB_DIR/state"
  local pid
  if pid=$(fdb_pid); then
    stop_pid ferretdb "$pid" 10 # alive but not serving: restart it
  fi
  local built=0
  if [[ -n $FDB_BUILD_PID ]]; then
    wait "$FDB_BUILD_PID" && built=1
    FDB_BUILD_PID=
  else
    fdb_build && built=1
  fi
  if [[ $built -ne 1 ]]; then
    fail ferretdb "building FerretDB $FDB_VERSION failed" "$FDB_DIR/build.log"
    return 0
  fi
  local p
  for p in "$MONGO_PORT" "$FDB_DEBUG_PORT"; do
    if ! port_free "$p"; then
      fail ferretdb "port 127.0.0.1:$p is already in use by another process: $(port_listeners "$p")"
      return 0
    fi
  done
  local storage
  case $FDB_HANDLER in
    sqlite) storage=(--handler=sqlite --sqlite-url="file:$FDB_DIR/data/") ;;
    postgresql)
      pg_layout
      if ! pg_up || ! pg_find_bin; then
        fail ferretdb "its storage, the PostgreSQL on 127.0.0.1:$PG_PORT, is not up"
        return 0
      fi
      if [[ $(pg_psql -d "$PG_DB" -tA -c "SELECT 1 FROM pg_database WHERE datname = '$FDB_PG_DB'") != 1 ]]; then
        pg_psql -d "$PG_DB" -c "CREATE DATABASE $FDB_PG_DB" >/dev/null ||
          { fail ferretdb "creating its PostgreSQL database $FDB_PG_DB failed"; return 0; }
      fi
      storage=(--handler=postgresql
        --postgresql-url="postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$FDB_PG_DB")
      ;;
    *)
      fail ferretdb "IMSTORE_FERRETDB_HANDLER must be postgresql or sqlite, not '$FDB_HANDLER'"
      return 0
      ;;
  esac
  log "starting ferretdb $FDB_VERSION on 127.0.0.1:$MONGO_PORT ($FDB_HANDLER storage)"
  (
    cd "$FDB_DIR"
    exec 9>&- # don't hand the lock to the server
    FERRETDB_TELEMETRY=disable DO_NOT_TRACK=1 exec setsid "$FDB_BIN" \
      "${storage[@]}" \
      --state-dir="$FDB_DIR/state" \
      --listen-addr="127.0.0.1:$MONGO_PORT" \
      --debug-addr="127.0.0.1:$FDB_DEBUG_PORT" \
      --telemetry=disable \
      --log-level=info \
      </dev/null >>"$FDB_LOG" 2>&1
  ) &
  echo "$!" >"$FDB_PIDFILE"

  local deadline=$((SECONDS + TIMEOUT_FDB))
  while ! fdb_up; do
    if ! launched "$FDB_PIDFILE"; then
      fail ferretdb "the process exited during startup" "$FDB_LOG"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      fail ferretdb "port 127.0.0.1:$MONGO_PORT not open after ${TIMEOUT_FDB}s" "$FDB_LOG"
      return 0
    fi
    sleep 0.2
  done
  log "ferretdb up (pid $(fdb_pid))"
}

fdb_stop() {
  local pid
  if pid=$(fdb_pid); then
    stop_pid ferretdb "$pid" 15
  else
    log "ferretdb not running"
  fi
  rm -f "$FDB_PIDFILE"
}

fdb_status() {
  local pid
  if pid=$(fdb_pid); then
    if port_open "$MONGO_PORT"; then
      local where="$FDB_DIR/data"
      if [[ $FDB_HANDLER == postgresql ]]; then where="PostgreSQL database $FDB_PG_DB on 127.0.0.1:$PG_PORT"; fi
      printf '%-10s up       pid %-8s 127.0.0.1:%-6s data %s\n' ferretdb "$pid" "$MONGO_PORT" "$where"
      return 0
    fi
    printf '%-10s starting pid %-8s 127.0.0.1:%-6s (port not open yet)\n' ferretdb "$pid" "$MONGO_PORT"
    return 1
  fi
  printf '%-10s down%s\n' ferretdb "$(port_note "$MONGO_PORT")"
  return 1
}

# ---------------------------------------------------------------- cluster --
#
# A 3-node Cassandra cluster on 127.0.0.2-4, for the multi-node tests
# (backends/scylla/tests/cluster.rs); separate from the single test node on
# 127.0.0.1, which keeps its ports (the cluster binds other addresses, and its
# JMX ports, which Cassandra binds on 127.0.0.1, differ). Same jars, Java,
# yaml and JVM options templates as the single node; small heaps.
#
#   scripts/servers.sh cluster start|stop|status|ring
#   scripts/servers.sh cluster kill N        SIGKILL node N (1-3), for fault tests
#   scripts/servers.sh cluster start-node N  start node N again on its data
#
# `start` starts the nodes one after another, each once its CQL port answers
# and the ring (nodetool status, from another live node) shows it UN, and
# writes .servers/cluster/env (IMSTORE_SCYLLA_CLUSTER_NODES). Settings:
#   IMSTORE_CLUSTER_CQL_PORT (default: the single node's CQL port, on the
#   cluster's own addresses)  IMSTORE_CLUSTER_STORAGE_PORT (default: the
#   single node's)  IMSTORE_CLUSTER_JMX_PORT=17201 (node N: +N-1)
#   IMSTORE_CLUSTER_HEAP=768M  IMSTORE_START_TIMEOUT_CLUSTER=240 (per node)

CLUSTER_DIR=$STATE/cluster
CLUSTER_SIZE=3
CLUSTER_CQL_PORT=${IMSTORE_CLUSTER_CQL_PORT:-$CQL_PORT}
CLUSTER_STORAGE_PORT=${IMSTORE_CLUSTER_STORAGE_PORT:-$CASS_STORAGE_PORT}
CLUSTER_JMX_BASE=${IMSTORE_CLUSTER_JMX_PORT:-17201}
CLUSTER_HEAP=${IMSTORE_CLUSTER_HEAP:-768M}
TIMEOUT_CLUSTER=${IMSTORE_START_TIMEOUT_CLUSTER:-240}
# Evenly spaced Murmur3 tokens, one per node (num_tokens: 1): 2^63 * (2(N-1)/3 - 1).
CLUSTER_TOKENS=(-9223372036854775808 -3074457345618258603 3074457345618258602)

node_ip() { printf '127.0.0.%d' $(($1 + 1)); }
node_dir() { printf '%s/node%d' "$CLUSTER_DIR" "$1"; }
node_jmx() { printf '%d' $((CLUSTER_JMX_BASE + $1 - 1)); }

# host_port_open HOST PORT: something accepts TCP connections on HOST:PORT.
host_port_open() {
  # shellcheck disable=SC2016 # $1 and $2 are expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

node_pid() {
  local d
  d=$(node_dir "$1")
  pid_matching "$d/cassandra.pid" "-Dcassandra.config=file://$d/conf/cassandra.yaml"
}

node_up() {
  node_pid "$1" >/dev/null && host_port_open "$(node_ip "$1")" "$CLUSTER_CQL_PORT"
}

# nodetool N ARGS...: Cassandra's nodetool (from the same jars) against node N's JMX.
# It needs the module exports/opens of jvm17.options too.
nodetool() {
  local n=$1 opts
  shift
  jvm_options '--add-*'
  opts=("${JVM_OPTS[@]}")
  timeout 60 "$JAVA" -Xmx128M -XX:+UseSerialGC "${opts[@]}" -cp "$CASS_LIB/*" \
    -Dlogback.configurationFile="$HELPERS/cassandra/logback-tools.xml" \
    org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$(node_jmx "$n")" "$@" </dev/null 2>/dev/null
}

# node_in_ring N: another live node (or N itself when it is the only one) sees N as UN.
node_in_ring() {
  local n=$1 o viewer=$1
  for o in $(seq 1 "$CLUSTER_SIZE"); do
    if ((o != n)) && node_up "$o"; then viewer=$o; break; fi
  done
  nodetool "$viewer" status | grep -Eq "^UN +$(node_ip "$n")[: ]"
}

# node_launch N: start node N's JVM (returns at once).
node_launch() {
  local n=$1 d ip jmx
  d=$(node_dir "$n")
  ip=$(node_ip "$n")
  jmx=$(node_jmx "$n")
  mkdir -p "$d/logs" "$d/conf" "$d/data"
  local p
  for p in "$ip:$CLUSTER_CQL_PORT" "$ip:$CLUSTER_STORAGE_PORT" "127.0.0.1:$jmx"; do
    local deadline=$((SECONDS + 15))
    while host_port_open "${p%:*}" "${p##*:}"; do
      if ((SECONDS >= deadline)); then
        fail "node$n" "$p is already in use by another process: $(port_listeners "${p##*:}")"
        return 1
      fi
      sleep 0.5
    done
  done

  # The single node's template, re-addressed: this node's address, the seed
  # node 1, its own token, the cluster's name. auto_bootstrap: false because
  # the cluster is created empty (nothing to stream), and a node started
  # again after a kill rejoins with its own data and token anyway.
  local yaml
  yaml=$(<"$HELPERS/cassandra/cassandra.yaml.in")
  yaml=${yaml//@DATA@/$d/data}
  yaml=${yaml//@STORAGE_PORT@/$CLUSTER_STORAGE_PORT}
  yaml=${yaml//@CQL_PORT@/$CLUSTER_CQL_PORT}
  yaml=${yaml//@PAXOS@/$CASS_PAXOS}
  yaml=${yaml//cluster_name: imstore-test/cluster_name: imstore-cluster}
  yaml=${yaml//initial_token: 0/initial_token: ${CLUSTER_TOKENS[n - 1]}}
  yaml=${yaml//listen_address: 127.0.0.1/listen_address: $ip}
  yaml=${yaml//rpc_address: 127.0.0.1/rpc_address: $ip}
  yaml=${yaml//\"127.0.0.1:/\"$(node_ip 1):}
  # phi_convict_threshold: 5 (the minimum; default 8) convicts a killed node
  # after ~11 s of gossip silence instead of ~18 s: until then coordinators
  # may still send it reads and wait for their timeout. Three JVMs share two
  # busy cores, so a Paxos round between nodes can miss the 2 s default write
  # timeout (WriteTimeout, write_type CAS, under the conformance cases'
  # contended purges and re-keys): 5 s, still under the client's 10 s.
  printf '%s\n\n# Added by scripts/servers.sh cluster.\n%s\n' "$yaml" \
    "auto_bootstrap: false
phi_convict_threshold: 5
write_request_timeout: 5000ms
cas_contention_timeout: 5000ms" >"$d/conf/cassandra.yaml"
  grep -q "listen_address: $ip" "$d/conf/cassandra.yaml" ||
    { fail "node$n" "the yaml template no longer has the lines the cluster re-addresses"; return 1; }
  cp "$HELPERS/cassandra/logback.xml" "$d/conf/logback.xml"

  local jamm opts
  jvm_options '-*'
  opts=("${JVM_OPTS[@]}")
  jamm=$(compgen -G "$CASS_LIB/jamm-*.jar" | head -n 1)

  log "starting cluster node $n on $ip:$CLUSTER_CQL_PORT (logs in $d/logs)"
  rm -f "$d/cassandra.pid"
  (
    cd "$d"
    exec 9>&- 8>&- # don't hand the locks to the server
    exec setsid "$JAVA" -Xms"$CLUSTER_HEAP" -Xmx"$CLUSTER_HEAP" "${opts[@]}" \
      -XX:ErrorFile="$d/logs/hs_err_pid%p.log" \
      -javaagent:"$jamm" \
      -Dcassandra.config="file://$d/conf/cassandra.yaml" \
      -Dcassandra-foreground=yes \
      -Dcassandra.logdir="$d/logs" \
      -Dlogback.configurationFile="$d/conf/logback.xml" \
      -Dcassandra.skip_wait_for_gossip_to_settle=0 \
      -Dcassandra.ring_delay_ms=0 \
      -Dcassandra.jmx.local.port="$jmx" \
      -Dcom.sun.management.jmxremote.rmi.port="$jmx" \
      -cp "$CASS_LIB/*" org.apache.cassandra.service.CassandraDaemon \
      </dev/null >>"$d/logs/console.log" 2>&1
  ) &
  echo "$!" >"$d/cassandra.pid"
}

# node_wait N: until node N answers CQL and is UN in the ring.
node_wait() {
  local n=$1 d deadline=$((SECONDS + TIMEOUT_CLUSTER))
  d=$(node_dir "$n")
  while ! node_up "$n" || ! node_in_ring "$n"; do
    if ! launched "$d/cassandra.pid"; then
      fail "node$n" "the JVM exited during startup" "$d/logs/console.log" "$d/logs/system.log"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      fail "node$n" "not up and UN after ${TIMEOUT_CLUSTER}s" "$d/logs/system.log"
      return 1
    fi
    sleep 1
  done
  log "cluster node $n up and UN (pid $(node_pid "$n"))"
}

# node_start N: start node N unless it is up, and wait for it.
node_start() {
  local n=$1 t0=$SECONDS
  if node_up "$n"; then
    log "cluster node $n already up (pid $(node_pid "$n"), $(node_ip "$n"):$CLUSTER_CQL_PORT)"
    return 0
  fi
  if ! node_pid "$n" >/dev/null; then node_launch "$n" || return 1; fi
  node_wait "$n" || return 1
  log "cluster node $n ready in $((SECONDS - t0))s"
}

cluster_prepare() {
  find_java17 || { apt_install openjdk-17-jre-headless && find_java17; } ||
    die "no Java 17 found (set IMSTORE_JAVA_HOME)"
  mkdir -p "$CLUSTER_DIR/logs"
  CASS_LOGS=$CLUSTER_DIR/logs cass_fetch_lib || die "Maven could not fetch cassandra-all $CASS_VERSION ($CLUSTER_DIR/logs/maven.log)"
}

cluster_write_env() {
  local nodes=() n
  for n in $(seq 1 "$CLUSTER_SIZE"); do nodes+=("$(node_ip "$n"):$CLUSTER_CQL_PORT"); done
  local IFS=,
  printf '# Written by scripts/servers.sh cluster start. Source it: . .servers/cluster/env\nexport IMSTORE_SCYLLA_CLUSTER_NODES=%s\n' \
    "${nodes[*]}" >"$CLUSTER_DIR/env.tmp.$$"
  mv "$CLUSTER_DIR/env.tmp.$$" "$CLUSTER_DIR/env"
}

cluster_node_arg() {
  [[ ${1:-} =~ ^[1-9]$ ]] && (($1 <= CLUSTER_SIZE)) || die "cluster node must be 1-$CLUSTER_SIZE, not '${1:-}'"
}

# The cluster's own lock (fd 8), so that it never waits behind the single
# node's start or kill, nor they behind it.
cluster_lock() {
  mkdir -p "$CLUSTER_DIR"
  exec 8>"$CLUSTER_DIR/.lock"
  flock -w 900 8 || die "another servers.sh cluster is still running (lock $CLUSTER_DIR/.lock)"
}

do_cluster() {
  local sub=${1:-} n t0=$SECONDS
  case $sub in
    start)
      cluster_lock
      cluster_prepare
      # One after another: a node joins a ring whose earlier nodes are UN.
      for n in $(seq 1 "$CLUSTER_SIZE"); do
        node_start "$n" || break
      done
      cluster_write_env
      if ((${#FAILED[@]})); then log "cluster FAILED to start: ${FAILED[*]}"; exit 1; fi
      log "cluster ready in $((SECONDS - t0))s; environment in $CLUSTER_DIR/env"
      ;;
    start-node)
      cluster_node_arg "${2:-}"
      cluster_lock
      cluster_prepare
      node_start "$2" || exit 1
      ;;
    stop)
      cluster_lock
      # TERM to every node at once (each drains its memtables), then wait.
      local pids=() pid
      for n in $(seq 1 "$CLUSTER_SIZE"); do
        if pid=$(node_pid "$n"); then
          log "stopping cluster node $n (pid $pid)"
          kill -TERM "$pid" 2>/dev/null || true
          pids+=("$pid")
        fi
      done
      for pid in "${pids[@]}"; do
        if ! wait_gone "$pid" 90; then kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 10 || true; fi
      done
      for n in $(seq 1 "$CLUSTER_SIZE"); do rm -f "$(node_dir "$n")/cassandra.pid"; done
      log "cluster stopped"
      ;;
    kill)
      cluster_node_arg "${2:-}"
      cluster_lock
      kill_pid "cluster node $2" "$(node_pid "$2" || true)"
      ;;
    status)
      local rc=0 pid
      for n in $(seq 1 "$CLUSTER_SIZE"); do
        if pid=$(node_pid "$n"); then
          if host_port_open "$(node_ip "$n")" "$CLUSTER_CQL_PORT"; then
            printf '%-10s up       pid %-8s %s:%-6s data %s\n' "node$n" "$pid" "$(node_ip "$n")" "$CLUSTER_CQL_PORT" "$(node_dir "$n")/data"
          else
            printf '%-10s starting pid %-8s %s:%-6s (CQL port not open yet)\n' "node$n" "$pid" "$(node_ip "$n")" "$CLUSTER_CQL_PORT"
            rc=3
          fi
        else
          printf '%-10s down\n' "node$n"
          rc=3
        fi
      done
      return "$rc"
      ;;
    ring)
      # The ring as the first live node sees it.
      cluster_prepare
      for n in $(seq 1 "$CLUSTER_SIZE"); do
        if node_up "$n"; then nodetool "$n" status; return; fi
      done
      die "no cluster node is up"
      ;;
    *)
      echo "usage: $0 cluster start|stop|status|ring | cluster kill N | cluster start-node N" >&2
      exit 2
      ;;
  esac
}

# ------------------------------------------------------------------- main --

write_env() {
  local tmp=$STATE/env.tmp.$$
  cat >"$tmp" <<EOF
# Written by scripts/servers.sh start. Source it: . .servers/env
export IMSTORE_POSTGRES_URL=postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export IMSTORE_SCYLLA_NODES=127.0.0.1:$CQL_PORT
export IMSTORE_MONGODB_URL=mongodb://127.0.0.1:$MONGO_PORT/
EOF
  mv "$tmp" "$STATE/env"
}

usage() {
  echo "usage: $0 start|stop|restart|status|kill [postgres|cassandra|ferretdb ...]" >&2
  exit 2
}

want() { # want NAME: NAME is among the selected servers
  local s
  for s in "${SELECTED[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}

# lock: one start/stop at a time per clone. Servers are started with fd 9
# closed, or they would hold the lock for their whole life.
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  if ! flock -w 900 9; then die "another servers.sh is still running (lock $STATE/.lock)"; fi
}

do_start() {
  lock
  local t0=$SECONDS
  if want ferretdb; then fdb_build_async; fi
  # Cassandra boots slowest: launch it first and wait for it last.
  if want cassandra; then cass_launch; fi
  if want postgres; then pg_start; fi
  if want ferretdb; then fdb_start; fi
  if want cassandra; then cass_wait; fi
  write_env
  if ((${#FAILED[@]})); then
    log "FAILED to start: ${FAILED[*]}"
    exit 1
  fi
  log "ready in $((SECONDS - t0))s; environment in $STATE/env"
}

do_stop() {
  lock
  if want ferretdb; then fdb_stop; fi
  if want cassandra; then cass_stop; fi
  if want postgres; then pg_stop; fi
}

# kill_pid NAME PID: SIGKILL (a crash, not a shutdown), then wait until it is gone.
kill_pid() {
  local name=$1 pid=$2
  [[ -n $pid ]] || { log "$name is not running"; return 0; }
  # The children too (PostgreSQL's backends), at once, as a machine crash would.
  local kids
  kids=$(pgrep -P "$pid" | tr '\n' ' ' || true)
  log "killing $name (pid $pid${kids:+, children $kids}) with SIGKILL"
  # shellcheck disable=SC2086 # word splitting of the child pids is intended
  kill -KILL "$pid" $kids 2>/dev/null || true
  wait_gone "$pid" 30 || die "$name (pid $pid) survived SIGKILL"
  local k
  for k in $kids; do wait_gone "$k" 30 || true; done
}

do_kill() {
  lock
  if want ferretdb; then kill_pid ferretdb "$(fdb_pid || true)"; fi
  if want cassandra; then kill_pid cassandra "$(cass_pid || true)"; fi
  if want postgres; then
    pg_layout
    kill_pid postgres "$(pg_pid || true)"
  fi
}

do_status() {
  local rc=0
  if want postgres; then pg_status || rc=3; fi
  if want cassandra; then cass_status || rc=3; fi
  if want ferretdb; then fdb_status || rc=3; fi
  return "$rc"
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
# The 3-node cluster has its own subcommands (see its section above).
if [[ $cmd == cluster ]]; then
  do_cluster "$@"
  exit
fi
SELECTED=("$@")
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${ALL_SERVERS[@]}")
for s in "${SELECTED[@]}"; do
  case $s in postgres | cassandra | ferretdb) ;; *) usage ;; esac
done
# FerretDB over PostgreSQL needs its PostgreSQL: starting it starts that too.
if [[ $cmd == start || $cmd == restart ]] && [[ $FDB_HANDLER == postgresql ]] && want ferretdb && ! want postgres; then
  SELECTED+=(postgres)
fi

case $cmd in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop && do_start ;;
  status) do_status ;;
  kill) do_kill ;;
  *) usage ;;
esac
