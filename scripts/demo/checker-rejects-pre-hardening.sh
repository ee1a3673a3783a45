#!/usr/bin/env bash
# Shows the history checker rejecting a recorded PostgreSQL history when the core decides
# requests in the order they had before the hardening (staleness checked before the replay
# lookup, refusals not recorded), and accepting the same run on the code as it is.
#
#   bash scripts/demo/checker-rejects-pre-hardening.sh [SEED]
#
# Needs the servers (scripts/servers.sh start). Works in a scratch git worktree, so the
# checkout is untouched, and builds the worktree in a target dir of its own: cargo hashes
# workspace crates by their path inside the workspace, so a worktree building into ./target
# would overwrite this checkout's artifacts with the patched core, and they would look fresh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
seed=${1:-14}
# shellcheck source=/dev/null
source .servers/env
wt=$(mktemp -d)/imstore-pre-hardening
git worktree add -q --detach "$wt" HEAD
trap 'git -C "$root" worktree remove --force "$wt"' EXIT

run() { # run DIR TARGET: the PostgreSQL history test in DIR; prints the checker's verdict
  (cd "$1" && IMSTORE_HISTORY_SEED=$seed CARGO_TARGET_DIR=$2 \
    cargo test -q -p imstore-postgres --all-features --test conformance -- history:: --nocapture 2>&1 |
    grep -E '^history|not linearizable|^  #|^with|^The longest|answered' || true)
}

echo "== the code as it is (seed $seed)"
run "$root" "${CARGO_TARGET_DIR:-$root/target}"
git -C "$wt" apply "$root/scripts/demo/pre-hardening-order.patch"
echo "== with the pre-hardening request order in core (seed $seed)"
out=$(run "$wt" "${IMSTORE_DEMO_TARGET_DIR:-$root/target/pre-hardening-demo}")
echo "$out"
if grep -q "not linearizable" <<<"$out"; then
  echo "== the checker rejected the pre-hardening history"
else
  echo "== the checker did not reject this seed; try another" >&2
  exit 1
fi
