//! Gives the shared library a soname that carries the ABI version. Exports need no version
//! script: rustc exports only the `#[no_mangle]` functions of a cdylib, all `rbd_diffsync_*`
//! (scripts/test-c.sh checks the list against the header).

/// Bumped on any incompatible change of include/rbd_diffsync.h; equal to
/// `RBD_DIFFSYNC_ABI_VERSION` there (a unit test checks it).
const ABI_VERSION: u32 = 1;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=RBD_DIFFSYNC_BUILD_ABI={ABI_VERSION}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librbd_diffsync.so.{ABI_VERSION}");
}
