#!/usr/bin/env bash
# A throw-away one-node Ceph cluster (1 mon, 1 mgr, 1 bluestore OSD on a sparse file, cephx on)
# for the demo, the tests and the benchmarks.
#
#   scripts/cluster.sh install          install Debian's Ceph packages when missing
#   scripts/cluster.sh start [DIR PORT] start a cluster in DIR (default /tmp/rbd-diffsync-ceph)
#                                       with its monitor on PORT (default 6789); prints the
#                                       path of its ceph.conf last
#   scripts/cluster.sh stop [DIR]       stop, by pid, the daemons started in DIR
#   scripts/cluster.sh status [DIR]
#
# With CEPH_QUICK=1 (what scripts/test.sh uses) the monitor proposes every 50 ms instead of
# every second, so that a snapshot takes about 0.1 s instead of 1 s, and the OSD expires a
# killed client's watch after 10 s instead of 30 s, so that the lock it held is broken sooner.
# The demo and the benchmarks keep Ceph's defaults.
#
# With CEPH_RELEASE=reef the daemons are Ceph 18.2 (Reef), Debian 13's packages, run from a
# Debian 13 root made with debootstrap in REEF_ROOT (default /var/lib/rbd-diffsync/trixie;
# made and filled on first use, about a minute): this script runs inside it, with DIR
# bind-mounted at the same path, so that the ceph.conf it prints serves this machine's own
# clients (Ceph 16.2) as well. `stop` stops them the same way, and unmounts DIR.
#
# DIR and PORT may also come from CEPH_DIR and CEPH_MON_PORT. Two clusters run side by side
# when each has its own DIR and PORT. Each cluster has pools `rbd` and `backups`, the user
# client.admin (keyring found through ceph.conf) and the user client.diffsync limited to
# rbd profiles, whose keyring DIR/client.diffsync.keyring is not named in ceph.conf.
set -euo pipefail

cmd=${1:-start}
D=${2:-${CEPH_DIR:-/tmp/rbd-diffsync-ceph}}
PORT=${3:-${CEPH_MON_PORT:-6789}}

log() { printf '%s\n' "$*" >&2; }

install() {
  local missing=()
  for bin in ceph-mon ceph-osd ceph-mgr ceph rbd; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ -f /usr/include/rbd/librbd.h ] || missing+=(librbd-dev)
  [ -f /usr/include/rados/librados.h ] || missing+=(librados-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Ceph packages (missing: ${missing[*]})"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    ceph-mon ceph-osd ceph-mgr ceph-common librbd-dev librados-dev >/dev/null
}

stop() {
  [ -d "$D/run" ] || return 0
  local p pid
  for p in "$D"/run/*.pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$p"
  done
}

wait_for() { # tries description command...
  local tries=$1 what=$2
  shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "cluster in $D: $what did not come up; logs are in $D/log"
  return 1
}

start() {
  install
  stop
  # Its content, not DIR itself: under CEPH_RELEASE=reef, DIR is a mount point.
  mkdir -p "$D"
  find "$D" -mindepth 1 -delete
  mkdir -p "$D"/{mon,osd0,mgr,run,log}
  local fsid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  local quick_mon="" quick_osd=""
  if [ "${CEPH_QUICK:-0}" = 1 ]; then
    quick_mon="paxos propose interval = 0.05"
    quick_osd="osd client watch timeout = 10"
  fi
  cat >"$D/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = 127.0.0.1:$PORT
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $D/client.admin.keyring
run dir = $D/run
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.\$pid.asok
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
osd pool default pg autoscale mode = off
[client]
log file = /dev/null
[mon]
mon data = $D/mon
$quick_mon
[osd]
$quick_osd
osd data = $D/osd0
keyring = $D/osd0/keyring
osd objectstore = bluestore
bluestore block path = $D/osd0.block
bluestore block create = true
bluestore block size = ${CEPH_BLOCK_BYTES:-42949672960}
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd op num shards = 2
# The block file sits on a disk the OSD takes for rotational, where it sleeps 5 s between
# snapshot trims: deleted images' snapshots would then hold their space for minutes.
osd snap trim sleep hdd = 0
osd snap trim sleep hybrid = 0
[mgr]
mgr data = $D/mgr
keyring = $D/mgr/keyring
CONF
  local c=(-c "$D/ceph.conf")
  ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$D/client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$D/mon.keyring" --import-keyring "$D/client.admin.keyring" >/dev/null
  monmaptool --create --add a "127.0.0.1:$PORT" --fsid "$fsid" "$D/monmap" >/dev/null
  ceph-mon "${c[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring"
  ceph-mon "${c[@]}" -i a
  wait_for 150 "the monitor" ceph "${c[@]}" -s
  ceph "${c[@]}" auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' >"$D/mgr/keyring"
  ceph-mgr "${c[@]}" -i x
  local osd_uuid id
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  id=$(ceph "${c[@]}" osd new "$osd_uuid")
  ceph-osd "${c[@]}" -i "$id" --mkfs --mkkey --osd-uuid "$osd_uuid" --no-mon-config >"$D/log/osd-mkfs.log" 2>&1
  ceph "${c[@]}" auth add "osd.$id" osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
    -i "$D/osd0/keyring" >/dev/null 2>&1
  ceph-osd "${c[@]}" -i "$id" 2>>"$D/log/osd-start.log"
  wait_for 300 "the OSD" sh -c "ceph -c '$D/ceph.conf' osd stat | grep -q '1 up'"
  local p
  for p in rbd backups; do
    ceph "${c[@]}" osd pool create "$p" 8 >/dev/null 2>&1
    ceph "${c[@]}" osd pool application enable "$p" rbd >/dev/null 2>&1
    rbd "${c[@]}" pool init "$p"
  done
  ceph "${c[@]}" auth get-or-create client.diffsync mon 'profile rbd' osd 'profile rbd' \
    mgr 'profile rbd' >"$D/client.diffsync.keyring"
  echo "$D/ceph.conf"
}

REEF_ROOT=${REEF_ROOT:-/var/lib/rbd-diffsync/trixie}

# A Debian 13 root with Ceph 18.2's daemons in REEF_ROOT, and this script in it.
reef_root() {
  if ! [ -x "$REEF_ROOT/usr/bin/ceph-mon" ]; then
    log "making a Debian 13 root with Ceph 18.2 in $REEF_ROOT"
    command -v debootstrap >/dev/null 2>&1 || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    [ -x "$REEF_ROOT/usr/bin/apt-get" ] ||
      debootstrap --variant=minbase trixie "$REEF_ROOT" http://deb.debian.org/debian >/dev/null
    cp /etc/resolv.conf "$REEF_ROOT/etc/resolv.conf"
    chroot "$REEF_ROOT" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends ceph-mon ceph-osd ceph-mgr ceph-common \
      librbd-dev librados-dev procps >/dev/null'
  fi
  local m
  for m in proc dev; do
    mountpoint -q "$REEF_ROOT/$m" || mount --bind "/$m" "$REEF_ROOT/$m"
  done
  mkdir -p "$REEF_ROOT/opt/rbd-diffsync"
  cp "${BASH_SOURCE[0]}" "$REEF_ROOT/opt/rbd-diffsync/cluster.sh"
}

reef() { # start|stop
  case $1 in
  start)
    reef_root
    mkdir -p "$D" "$REEF_ROOT$D"
    mountpoint -q "$REEF_ROOT$D" || mount --bind "$D" "$REEF_ROOT$D"
    chroot "$REEF_ROOT" env CEPH_QUICK="${CEPH_QUICK:-}" CEPH_RELEASE= \
      bash /opt/rbd-diffsync/cluster.sh start "$D" "$PORT"
    ;;
  stop)
    stop
    if [ -n "$D" ] && mountpoint -q "$REEF_ROOT$D" 2>/dev/null; then umount "$REEF_ROOT$D"; fi
    ;;
  esac
}

if [ "${CEPH_RELEASE:-}" = reef ]; then
  case $cmd in
  start | stop)
    reef "$cmd"
    exit 0
    ;;
  esac
fi

case "$cmd" in
install) install ;;
start) start ;;
stop) stop ;;
status) ceph -c "$D/ceph.conf" -s ;;
*)
  log "usage: $0 install|start|stop|status [DIR [PORT]]"
  exit 2
  ;;
esac
