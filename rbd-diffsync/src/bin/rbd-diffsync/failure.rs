//! Failures: their exit statuses, their message on stderr and JSON error object on stdout,
//! and clap's refusals of the command line.

use std::ffi::OsString;

use rbd_diffsync::error::code_name;
use rbd_diffsync::{Error, ErrorKind};
use serde_json::json;

use crate::output::print_out;

/// The exit status of a failure with this code, as the rbd CLI's (`abs(errno)`, which the
/// system cuts to its low byte), never 0.
pub(crate) fn exit_status(code: i32) -> u8 {
    match (code.unsigned_abs() & 0xff) as u8 {
        0 => 1,
        status => status,
    }
}

/// The error object; `offset` only for a mismatch.
fn error_json(
    kind: ErrorKind,
    errno: i32,
    message: &str,
    image: Option<&str>,
    snap: Option<&str>,
    offset: Option<u64>,
) -> serde_json::Value {
    let mut value = json!({
        "error": {
            "kind": kind.name(),
            "errno": errno,
            "code": code_name(errno),
            "message": message,
            "image": image,
            "snap": snap,
        }
    });
    if let Some(offset) = offset {
        value["error"]["offset"] = offset.into();
    }
    value
}

/// The error object of `e`.
pub(crate) fn error_value(e: &Error) -> serde_json::Value {
    error_json(
        e.kind(),
        e.errno(),
        e.message(),
        e.image(),
        e.snap(),
        e.offset(),
    )
}

/// Writes an error object on stdout, on a line of its own.
fn print_json(value: &serde_json::Value) {
    print_out(&format!("{value}\n"));
}

/// A failure of the command itself, not of a transfer: as [`fail`].
pub(crate) fn fail_with(kind: ErrorKind, errno: i32, message: &str, json: bool) -> u8 {
    eprintln!("rbd-diffsync: error: {message}");
    if json {
        print_json(&error_json(kind, errno, message, None, None, None));
    }
    exit_status(errno)
}

fn fail(e: &Error, json: bool) -> u8 {
    eprintln!("rbd-diffsync: error: {e}");
    if json {
        print_json(&error_value(e));
    }
    exit_status(e.errno())
}

/// The exit status of a subcommand that returned `result`, its error reported by [`fail`].
pub(crate) fn status(result: Result<u8, Error>, json: bool) -> u8 {
    match result {
        Ok(status) => status,
        Err(e) => fail(&e, json),
    }
}

/// Whether a command line that clap refused asked for JSON output.
fn json_requested(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut previous = OsString::new();
    for arg in args.into_iter().skip(1) {
        if arg == "--" {
            break;
        }
        if arg == "--json" || arg == "--format=json" || (previous == "--format" && arg == "json") {
            return true;
        }
        previous = arg;
    }
    false
}

/// clap's refusal of the command line: its usual message, exit status EINVAL (22), and the
/// JSON error object when JSON was asked for; `--help` and `--version` exit 0.
pub(crate) fn usage_error(e: clap::Error) -> u8 {
    let _ = e.print();
    if !e.use_stderr() {
        return 0;
    }
    if json_requested(std::env::args_os()) {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let value = error_json(
            ErrorKind::InvalidArgument,
            libc::EINVAL,
            message,
            None,
            None,
            None,
        );
        print_json(&value);
    }
    exit_status(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::Cli;
    use clap::Parser;

    #[test]
    fn exit_statuses_are_codes_modulo_256() {
        assert_eq!(exit_status(libc::ENOENT), 2);
        assert_eq!(exit_status(libc::ECANCELED), 125);
        assert_eq!(
            exit_status(rbd_diffsync::error::CODE_DESTINATION_CHANGED),
            200
        );
        assert_eq!(exit_status(rbd_diffsync::error::CODE_MISMATCH), 201);
        assert_eq!(exit_status(256), 1, "never 0 for a failure");
    }

    #[test]
    fn usage_errors_and_their_json_request_are_recognised() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(json_requested(args(&["x", "sync", "--format", "json"])));
        assert!(json_requested(args(&["x", "sync", "--json", "--bad"])));
        assert!(!json_requested(args(&["x", "sync", "--", "--json"])));
        assert!(!json_requested(args(&["x", "sync", "--format", "plain"])));
        for bad in [
            &["sync", "--id", "a", "--name", "client.b", "a", "b"][..],
            &["sync", "-o", "novalue", "a", "b"],
            &["sync", "--chunk-size", "4X", "a", "b"],
            &["sync", "--connect-timeout", "-1", "a", "b"],
            &["sync", "a"],
            &["verify", "a"],
            &["verify", "--window", "x", "a", "b"],
        ] {
            let argv = std::iter::once("rbd-diffsync").chain(bad.iter().copied());
            let e = Cli::try_parse_from(argv).err().expect("refused");
            assert!(e.use_stderr(), "{bad:?}");
        }
    }
}
