//! SIGINT, SIGTERM and SIGHUP: the first cancels the run (with a message saying what that
//! does), a second kills the process at once.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rbd_diffsync::CancelToken;

use crate::progress::OpenLine;

/// What a first signal does to a transfer, for its message.
pub(crate) const TRANSFER_EFFECT: &str =
    "the requests in flight drain and no end snapshot is created, unless it is \
     being created already";

/// The first SIGINT, SIGTERM or SIGHUP cancels `token`; a second one kills the process at
/// once: its handler restores the default disposition and raises the signal again. The
/// handlers only set flags; the message is printed by a thread of signal-hook's iterator.
fn handle_signals(token: CancelToken, open: OpenLine, effect: &'static str) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];
    let received = Arc::new(AtomicBool::new(false));
    for signal in SIGNALS {
        // Registered first, so it runs before the flag is set: only a later signal finds it set.
        signal_hook::flag::register_conditional_default(signal, received.clone())?;
        signal_hook::flag::register(signal, received.clone())?;
    }
    let mut signals = signal_hook::iterator::Signals::new(SIGNALS)?;
    std::thread::Builder::new()
        .name("rbd-diffsync-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                token.cancel();
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
                let mut err = std::io::stderr().lock();
                open.end(&mut err);
                let _ = writeln!(
                    err,
                    "rbd-diffsync: {name} received: cancelling ({effect}); send it again to stop \
                     at once"
                );
            }
        })?;
    Ok(())
}

/// A token that the first SIGINT, SIGTERM or SIGHUP cancels (see [`handle_signals`]).
pub(crate) fn cancel_on_signals(open: &OpenLine, effect: &'static str) -> CancelToken {
    let cancel = CancelToken::new();
    if let Err(e) = handle_signals(cancel.clone(), open.clone(), effect) {
        eprintln!(
            "rbd-diffsync: warning: cannot handle signals ({e}): a signal ends the process at once"
        );
    }
    cancel
}
