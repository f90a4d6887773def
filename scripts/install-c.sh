#!/usr/bin/env bash
# Builds the C library (rbd-diffsync-ffi) and installs it under a prefix:
#   PREFIX/include/rbd_diffsync.h
#   PREFIX/lib/librbd_diffsync.so.<ABI> (its soname), librbd_diffsync.so -> it, librbd_diffsync.a
#   PREFIX/lib/.debug/librbd_diffsync.so.<ABI>.debug (release: the debug info, split off)
#   PREFIX/lib/pkgconfig/rbd_diffsync.pc
# Usage: scripts/install-c.sh [--debug] PREFIX   (release build unless --debug)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=release
if [ "${1:-}" = --debug ]; then
  profile=debug
  shift
fi
[ $# -eq 1 ] || {
  echo "usage: $0 [--debug] PREFIX" >&2
  exit 2
}
mkdir -p "$1"
prefix=$(cd "$1" && pwd)

cd "$root"
if [ "$profile" = release ]; then
  cargo build -q --release -p rbd-diffsync-ffi
else
  cargo build -q -p rbd-diffsync-ffi
fi
out=${CARGO_TARGET_DIR:-$root/target}/$profile
soname=$(readelf -d "$out/librbd_diffsync_ffi.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ -n "$soname" ] || {
  echo "$out/librbd_diffsync_ffi.so has no soname" >&2
  exit 1
}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 644 include/rbd_diffsync.h "$prefix/include/"
install -m 755 "$out/librbd_diffsync_ffi.so" "$prefix/lib/$soname"
if [ "$profile" = release ]; then
  # As distributions ship a library: stripped, its debug info in a file of its own, which gdb
  # finds through the library's debuglink in lib/.debug/.
  install -d "$prefix/lib/.debug"
  objcopy --only-keep-debug "$prefix/lib/$soname" "$prefix/lib/.debug/$soname.debug"
  chmod 644 "$prefix/lib/.debug/$soname.debug"
  objcopy --strip-unneeded --add-gnu-debuglink="$prefix/lib/.debug/$soname.debug" "$prefix/lib/$soname"
fi
ln -sfn "$soname" "$prefix/lib/librbd_diffsync.so"
install -m 644 "$out/librbd_diffsync_ffi.a" "$prefix/lib/librbd_diffsync.a"
# Libs.private: what `rustc --print native-static-libs` lists for the static library, and
# --gc-sections, as rustc links.
cat >"$prefix/lib/pkgconfig/rbd_diffsync.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: rbd_diffsync
Description: Move the changes between two snapshots of a Ceph RBD image into another image
Version: $version
Libs: -L\${libdir} -lrbd_diffsync
Libs.private: -Wl,--gc-sections -lrbd -lrados -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
Cflags: -I\${includedir}
PC
echo "installed rbd_diffsync $version ($soname, $profile) under $prefix"
