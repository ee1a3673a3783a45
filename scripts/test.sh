#!/usr/bin/env bash
# The project's test command (README): starts the local database servers,
# runs the Rust test suite against them, and stops again the servers that it
# started itself (servers that were already up are left running).
#
# Works from a fresh clone with nothing installed or started, under CI=true
# and without stdin. Exits with the tests' status.
set -euo pipefail

# CI may hand over a minimal environment.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Toolchains installed outside the default PATH on these machines.
for d in "$HOME/.cargo/bin" /usr/local/go/bin; do
  if [[ -d $d && :$PATH: != *:$d:* ]]; then PATH=$d:$PATH; fi
done
export PATH
# Never let rustup download a toolchain (only the crate registry is
# reachable): use the installed one, or fail here with a clear message.
export RUSTUP_AUTO_INSTALL=0

servers=(postgres cassandra ferretdb)
cluster_started=0
started=()
for s in "${servers[@]}"; do
  if ! bash scripts/servers.sh status "$s" >/dev/null 2>&1; then started+=("$s"); fi
done

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if ((cluster_started)); then
    echo "[test.sh] stopping the 3-node cluster this run started" >&2
    bash scripts/servers.sh cluster stop </dev/null || true
  fi
  if ((${#started[@]})); then
    echo "[test.sh] stopping the servers this run started: ${started[*]}" >&2
    bash scripts/servers.sh stop "${started[@]}" </dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash scripts/servers.sh start </dev/null
echo "[test.sh] servers up after $SECONDS s" >&2
# shellcheck source=/dev/null
source .servers/env

echo "[test.sh] $(cargo --version), $(rustc --version)" >&2

status=0
# Each step runs even when an earlier one failed, so one run reports every problem; the exit
# status is the first failure's.
# Each step's time is printed, so a run that nears CI's time limit shows where the time went.
step() {
  echo "[test.sh] $*" >&2
  local t0=$SECONDS
  "$@" </dev/null || { local rc=$?; if ((status == 0)); then status=$rc; fi; }
  echo "[test.sh] took $((SECONDS - t0)) s (run total $SECONDS s): $*" >&2
}
step cargo fmt --all --check
step cargo test --workspace --all-features
# The smoke tests again, uncaptured, so the log shows each server's own version string.
step cargo test --all-features -p imstore-postgres -p imstore-mongodb -p imstore-scylla --test smoke -- --nocapture
# Every conformance case and the node-kill fault test on a 3-node Cassandra cluster at RF 3
# (127.0.0.2-4), started here and stopped after. Skipped only outside CI with IMSTORE_CLUSTER=0.
if [[ ${CI:-} == true || ${IMSTORE_CLUSTER:-1} != 0 ]]; then
  if ! bash scripts/servers.sh cluster status >/dev/null 2>&1; then cluster_started=1; fi
  echo "[test.sh] bash scripts/servers.sh cluster start" >&2
  t0=$SECONDS
  if bash scripts/servers.sh cluster start </dev/null; then
    echo "[test.sh] cluster up in $((SECONDS - t0)) s" >&2
    # shellcheck source=/dev/null
    source .servers/cluster/env
    step cargo test --all-features -p imstore-scylla --test cluster
  elif ((status == 0)); then
    status=1
  fi
  if ((cluster_started)); then
    bash scripts/servers.sh cluster stop </dev/null || true
    cluster_started=0
  fi
else
  echo "[test.sh] IMSTORE_CLUSTER=0: the 3-node cluster suite is not run" >&2
fi
step cargo clippy --workspace --all-targets --all-features -- -D warnings
# The bench targets built and linked in the test profile: clippy above type-checks them, this
# proves they link. (`cargo bench --no-run` rebuilt the whole tree optimised: 1,060 s of a
# 3,579 s run on a 2-core machine, for the same check.)
step cargo test --workspace --all-features --benches --no-run
# The content decoder under libFuzzer for a bounded time (nightly, cargo-fuzz).
step bash scripts/fuzz.sh "${IMSTORE_FUZZ_SECONDS:-60}"

exit "$status"
