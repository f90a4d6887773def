#!/usr/bin/env bash
# The Python suite, against two running clusters ($RBD_DIFFSYNC_CONF, $RBD_DIFFSYNC_CONF2; see
# scripts/cluster.sh). It works as users do: maturin builds the abi3 wheel, pip installs it
# into fresh virtual environments, and the tests import the installed package.
#
#   1. venv "wheel" (python3 on PATH, no system packages): maturin, pytest and mypy from
#      PyPI; builds the wheel, checks what its module links, checks the hand-kept .pyi against
#      the module with mypy's stubtest, and runs every test not marked `cinder`.
#   2. venv "pip": `pip install ./rbd-diffsync-py` (the README's one command), then the
#      README's example.
#   3. venv "cinder" (Debian's /usr/bin/python3 with --system-site-packages, for Debian's
#      python3-rbd and python3-rados, installed by apt when missing): cinder 29.0.0 from PyPI,
#      a newer pyOpenSSL than Debian's (eventlet, which cinder imports, needs it), the same
#      wheel; runs the tests marked `cinder`: cinder's own CephBackupDriver code paths.
#
# PY_TEST_DIR (default target/python-tests) holds the wheel and the venvs, made anew on every
# run unless PY_TEST_REUSE_VENVS=1 (for quick reruns while developing).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
: "${RBD_DIFFSYNC_CONF:?must name the ceph.conf of a running test cluster}"
: "${RBD_DIFFSYNC_CONF2:?must name the ceph.conf of a second running test cluster}"
dir=${PY_TEST_DIR:-$root/target/python-tests}
reuse=${PY_TEST_REUSE_VENVS:-0}
pip_opts=(-q --disable-pip-version-check)
started=$SECONDS

step() { printf '\n== python: %s (%ss)\n' "$*" "$((SECONDS - started))"; }

apt_install() {
  [ "$(id -u)" = 0 ] || { echo "missing Debian packages: $*; install them and rerun" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

# A fresh venv at $1 made by the python $2 (with its further arguments), unless reused.
make_venv() {
  local venv=$1 python=$2
  shift 2
  if [ "$reuse" = 1 ] && [ -x "$venv/bin/python" ]; then
    return
  fi
  rm -rf "$venv"
  "$python" -m venv "$@" "$venv"
}

step "virtual environments"
mkdir -p "$dir"
python3 -c 'import ensurepip' 2>/dev/null && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null ||
  apt_install python3-venv
/usr/bin/python3 -c 'import rbd, rados' 2>/dev/null || apt_install python3-rbd python3-rados
make_venv "$dir/venv-wheel" python3
"$dir/venv-wheel/bin/pip" install "${pip_opts[@]}" maturin pytest mypy
make_venv "$dir/venv-cinder" /usr/bin/python3 --system-site-packages
"$dir/venv-cinder/bin/pip" install "${pip_opts[@]}" cinder==29.0.0 pytest
"$dir/venv-cinder/bin/pip" install "${pip_opts[@]}" --upgrade pyopenssl

step "wheel"
rm -rf "$dir/dist"
"$dir/venv-wheel/bin/maturin" build --release --quiet -m rbd-diffsync-py/Cargo.toml -o "$dir/dist"
wheel=$(ls "$dir"/dist/rbd_diffsync-*-cp39-abi3-linux_*.whl)
echo "$wheel"
"$dir/venv-wheel/bin/pip" install "${pip_opts[@]}" --force-reinstall "$wheel"
"$dir/venv-cinder/bin/pip" install "${pip_opts[@]}" --force-reinstall --no-deps "$wheel"

step "what the module links"
# The wheel is tagged linux_*, not manylinux: it links the machine's librbd and librados,
# which must match its Ceph, and bundles nothing. Check that it needs nothing else, and never
# libpython (an abi3 module takes its symbols from the interpreter that loads it).
so=$("$dir/venv-wheel/bin/python" -c 'import rbd_diffsync._native as m; print(m.__file__)')
needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
echo "$(basename "$so") needs: $needed"
for lib in $needed; do
  case $lib in
    librbd.so.1 | librados.so.2 | libc.so.6 | libm.so.6 | libgcc_s.so.1 | libpthread.so.0 | libdl.so.2 | ld-linux-*.so.*) ;;
    *) echo "unexpected library: $lib" >&2; exit 1 ;;
  esac
done
for lib in librbd.so.1 librados.so.2; do
  case " $needed " in *" $lib "*) ;; *) echo "$lib is not linked" >&2; exit 1 ;; esac
done
# What ships carries no test-only code: the core is built without its `internals` and `sim`
# features, and none of their code is in the module.
if cargo tree -q -p rbd-diffsync-py -e features -i rbd-diffsync | grep -E 'feature "(internals|sim)"'; then
  echo "rbd-diffsync-py builds the core with a test-only feature" >&2
  exit 1
fi
if nm -C "$so" | grep -E 'rbd_diffsync::(internals|sim)::'; then
  echo "$(basename "$so") holds test-only code" >&2
  exit 1
fi
if ldd "$so" | grep -q 'not found'; then
  ldd "$so" >&2
  exit 1
fi

step "stubtest"
# From outside the source tree: the installed package is checked.
(cd "$dir" && "$dir/venv-wheel/bin/python" -m mypy.stubtest rbd_diffsync._native)
(cd "$dir" && "$dir/venv-wheel/bin/python" -m mypy --ignore-missing-imports -p rbd_diffsync)

step "tests"
cd "$root/rbd-diffsync-py"
"$dir/venv-wheel/bin/python" -m pytest -m "not cinder" -rs --durations=5
step "pip install ./rbd-diffsync-py, as the README says"
# The one command of a user with a clone: pip builds the wheel through maturin, the build
# backend pyproject.toml names (fetched into pip's isolated build environment), and installs
# it; the README's example then runs against it.
make_venv "$dir/venv-pip" python3
"$dir/venv-pip/bin/pip" install "${pip_opts[@]}" "$root/rbd-diffsync-py" pytest
"$dir/venv-pip/bin/python" -m pytest -q -p no:cacheprovider tests/test_readme.py
step "cinder's driver"
"$dir/venv-cinder/bin/python" -m pytest -m cinder -rs -W ignore::DeprecationWarning --durations=3
step "done"
