#!/usr/bin/env bash
# The rbd-diffsync demo, from a fresh Debian 12 machine with Rust (cargo) installed:
#   1. installs the Ceph packages when missing (scripts/cluster.sh install);
#   2. starts a throw-away one-node cluster in DEMO_DIR (default /tmp/rbd-diffsync-demo) with
#      its monitor on DEMO_PORT (default 6789);
#   3. builds the CLI (cargo build --release --features cli -p rbd-diffsync);
#   4. creates rbd/demo and fills it with `rbd bench` writes, snapshots s1 and s2;
#   5. syncs rbd/demo@s1 into backups/demo-backup (full), then s1..s2 (incremental);
#   6. checks that backups/demo-backup@s1 and @s2 read the same as rbd/demo@s1 and @s2.
# The cluster is left running; the script prints how to stop it. Running it again starts over
# (cluster.sh start wipes DEMO_DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DEMO_DIR:-/tmp/rbd-diffsync-demo}
PORT=${DEMO_PORT:-6789}
CLUSTER="$ROOT/scripts/cluster.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release/rbd-diffsync"
SRC=rbd/demo
DEST=backups/demo-backup

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}

# rustup puts cargo in ~/.cargo/bin, which a fresh login shell may not have on PATH yet.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 ||
  die "cargo not found: install Rust first (https://rustup.rs, or: apt-get install cargo) and make sure cargo is on PATH"

step "Installing the Ceph packages (when missing)"
bash "$CLUSTER" install

step "Starting a one-node cluster in $DIR (monitor on 127.0.0.1:$PORT)"
# A demo cluster left over from an earlier run is stopped first, so that its monitor does not
# count as a foreign user of the port.
bash "$CLUSTER" stop "$DIR"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "port $PORT is in use by another program (another cluster's daemons?); pick a free one with DEMO_PORT=..."
fi
CONF=$(bash "$CLUSTER" start "$DIR" "$PORT" | tail -n 1)
[ -f "$CONF" ] || die "cluster.sh start did not print the path of a ceph.conf (got: $CONF)"
echo "cluster up: $CONF"
rbd() { command rbd -c "$CONF" "$@"; }

step "Building the CLI"
(cd "$ROOT" && cargo build --release --features cli -p rbd-diffsync)
[ -x "$BIN" ] || die "$BIN was not built"

step "Creating $SRC (1 GiB) and writing 256 MiB sequentially, then snapshot s1"
rbd create --size 1G "$SRC"
rbd bench --io-type write --io-size 4M --io-total 256M --io-pattern seq "$SRC" | tail -n 1
rbd snap create --no-progress "$SRC@s1"

step "Writing 64 MiB in random 64 KiB blocks, then snapshot s2"
rbd bench --io-type write --io-size 64K --io-total 64M --io-pattern rand "$SRC" | tail -n 1
rbd snap create --no-progress "$SRC@s2"

step "Full sync: $SRC@s1 -> $DEST"
echo "\$ rbd-diffsync sync -c $CONF $SRC@s1 $DEST"
"$BIN" sync -c "$CONF" "$SRC@s1" "$DEST"

step "Incremental sync: $SRC@s2 since s1 -> $DEST"
echo "\$ rbd-diffsync sync -c $CONF --from-snap s1 $SRC@s2 $DEST"
"$BIN" sync -c "$CONF" --from-snap s1 "$SRC@s2" "$DEST"

step "Verifying: md5 of each snapshot on both images"
ok=1
for snap in s1 s2; do
  a=$(rbd export --no-progress "$SRC@$snap" - | md5sum | cut -d' ' -f1)
  b=$(rbd export --no-progress "$DEST@$snap" - | md5sum | cut -d' ' -f1)
  printf '%s  %s\n' "$a" "$SRC@$snap" "$b" "$DEST@$snap"
  if [ "$a" = "$b" ]; then
    echo "$snap: match"
  else
    echo "$snap: MISMATCH" >&2
    ok=0
  fi
done
echo
echo "\$ rbd snap ls $DEST"
rbd snap ls "$DEST"
[ "$ok" -eq 1 ] || die "the backup does not read the same as the source"

cat <<EOF

Demo done: both snapshots of $DEST read the same as those of $SRC.

The cluster is still running. Stop it with:
  bash $CLUSTER stop $DIR

Try the CLI by hand:
  export CEPH_CONF=$CONF
  rbd bench --io-type write --io-size 64K --io-total 16M --io-pattern rand $SRC
  rbd snap create $SRC@s3
  $BIN sync --dry-run --from-snap s2 $SRC@s3 $DEST
  $BIN sync --from-snap s2 $SRC@s3 $DEST
  $BIN sync --help
EOF
