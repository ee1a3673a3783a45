#!/usr/bin/env bash
# Fuzzes the content decoder for a bounded time: scripts/fuzz.sh [SECONDS] (default 60).
# Installs cargo-fuzz when missing; needs the nightly toolchain (installed on these machines).
set -euo pipefail
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-60}
for d in "$HOME/.cargo/bin"; do
  if [[ -d $d && :$PATH: != *:$d:* ]]; then PATH=$d:$PATH; fi
done
export RUSTUP_AUTO_INSTALL=0
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/corpus/decode
cargo run -q -p imstore-core --example codec_seeds -- fuzz/corpus/decode
cd fuzz
# -rss_limit_mb: a decompression bomb must fail, not eat the machine.
exec cargo +nightly fuzz run decode corpus/decode -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -max_len=70000 -print_final_stats=1
