#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, from a fresh Debian 12 machine with Rust (cargo) installed:
#   1. installs the Ceph packages when missing and starts a throw-away one-node cluster in
#      BENCH_DIR (default /tmp/rbd-diffsync-bench) with its monitor on BENCH_PORT (default 6795);
#   2. builds and runs rbd-diffsync-bench on it: DiffTransfer against `rbd export-diff |
#      rbd import-diff` and `rbd deep cp`, next to the copy ceiling, every result checked by
#      md5, and `rbd-diffsync verify` against `rbd export | md5sum` of both images; prints the
#      table;
#   3. runs the micro-benchmarks of the hot paths (zero detection, planner);
#   4. stops the cluster.
# Arguments go to rbd-diffsync-bench: `--small --reps 1` is the short form CI runs, `--sweep`
# adds the sweep of window and chunk size, `--latency-ms 0,1,3` times the pipes, `rbd deep cp`
# and DiffTransfer behind a delay proxy at those round trips instead of the main table (needs
# gcc for the shim; see BENCHMARKS.md), `--help` lists the rest.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
dir=${BENCH_DIR:-/tmp/rbd-diffsync-bench}
port=${BENCH_PORT:-6795}

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "cargo is missing: install Rust (https://rustup.rs) and rerun" >&2
  exit 1
}

bash scripts/cluster.sh install
cargo build --release -q -p rbd-diffsync-benches
trap 'bash scripts/cluster.sh stop "$dir"' EXIT
conf=$(bash scripts/cluster.sh start "$dir" "$port" | tail -n 1)

"${CARGO_TARGET_DIR:-target}/release/rbd-diffsync-bench" -c "$conf" "$@"

echo
echo "## Hot paths"
echo
quick=()
for a in "$@"; do
  [ "$a" = --small ] && quick=(--sample-count 10)
done
cargo bench -q -p rbd-diffsync-benches --bench hot_paths -- "${quick[@]}"
