#!/usr/bin/env bash
# Runs every check and test of the project on a fresh Debian 12 machine: installs Ceph when
# missing, starts two throw-away clusters (the cross-cluster tests need both), then runs
# rustfmt, clippy, the unit tests and the live-cluster tests, stops the clusters, runs the
# transfer's live suites against a Ceph 18.2 cluster too, and runs the short form of the
# benchmark (scripts/bench.sh --small --reps 1) on a cluster of its own.
#
# TEST_CEPH_DIR (default /tmp/rbd-diffsync-test) and TEST_CEPH_PORT (default 6791; the second
# cluster uses the next port) choose where the clusters live.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
base=${TEST_CEPH_DIR:-/tmp/rbd-diffsync-test}
port=${TEST_CEPH_PORT:-6791}

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "cargo is missing: install Rust (https://rustup.rs) and rerun" >&2
  exit 1
}

step "installing what is missing"
bash scripts/cluster.sh install
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc -q -p rbd-diffsync --no-deps

step "build"
cargo build --workspace --all-targets --all-features

step "fault-schedule explorer (simulated cluster, 2000 seeds)"
# The transfer's protocol on a simulated cluster under kills, pauses, foreign writes and
# concurrent starts; a failing seed is printed with what happened. A longer run:
#   cargo run -p rbd-diffsync-explore --release -- --schedules 1000000
cargo run -q -p rbd-diffsync-explore -- --schedules "${EXPLORE_SCHEDULES:-2000}"

step "starting two clusters"
stop_clusters() {
  bash scripts/cluster.sh stop "$base-1" || true
  bash scripts/cluster.sh stop "$base-2" || true
}
trap stop_clusters EXIT
conf1=$(CEPH_QUICK=1 bash scripts/cluster.sh start "$base-1" "$port" | tail -n 1)
conf2=$(CEPH_QUICK=1 bash scripts/cluster.sh start "$base-2" "$((port + 1))" | tail -n 1)
export RBD_DIFFSYNC_CONF=$conf1 RBD_DIFFSYNC_CONF2=$conf2
echo "clusters: $conf1 $conf2"

step "tests"
# Two test threads: the OSDs share the machine's cores with the tests.
cargo test --workspace --all-features -- --test-threads "${TEST_THREADS:-2}"
# The fault tests that stop the first cluster's OSD, alone: they would stall every other test.
cargo test -p rbd-diffsync-tests --all-features --test faults -- --ignored --test-threads 1
bash scripts/test-c.sh
bash scripts/test-python.sh

stop_clusters
trap - EXIT

step "Ceph 18.2 (Reef): the transfer's suites against it, with this machine's 16.2 client"
# A cluster of Debian 13's Ceph 18.2, from a Debian 13 root made with debootstrap (see
# scripts/cluster.sh, CEPH_RELEASE=reef): full and incremental transfers, the kill-and-rerun,
# safety and trust tests (the caps test among them), verify and sync-many, run by this
# machine's client against the newer cluster.
reef_dir=$base-reef
stop_reef() { CEPH_RELEASE=reef bash scripts/cluster.sh stop "$reef_dir" || true; }
trap stop_reef EXIT
reef_conf=$(CEPH_RELEASE=reef CEPH_QUICK=1 bash scripts/cluster.sh start "$reef_dir" "$((port + 2))" | tail -n 1)
ceph -c "$reef_conf" versions
RBD_DIFFSYNC_CONF=$reef_conf RBD_DIFFSYNC_CONF2=$reef_conf cargo test -p rbd-diffsync-tests \
  --all-features --test sync --test killed --test trust --test safety --test verify --test many \
  -- --test-threads "${TEST_THREADS:-2}"
stop_reef
trap - EXIT

step "benchmark, short form (small images, one repetition; figures are not checked)"
# Keeps the benchmark from rotting: it runs every contender and checks every result by md5.
bash scripts/bench.sh --small --reps 1
