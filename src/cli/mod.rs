//! The commands of the `xmbridge` binary. Each file is one command: its arguments (clap derive, with
//! an example in `--help`) and a `run` function. Only the binary uses `anyhow`; the libraries return
//! typed errors.

pub mod account;
pub mod action;
pub mod bench;
pub mod bench_cluster;
pub mod bench_contacts;
pub mod bench_workflows;
pub mod cluster;
pub mod connection;
pub mod demo;
pub mod lake;
pub mod serve;
pub mod simulate;
pub mod state;
pub mod sync;
pub mod user;
pub mod workflow;
pub mod workflow_run;

use std::fmt;

/// Exit code when another sync is writing the destination (sysexits' EX_TEMPFAIL: try again
/// later).
pub const EXIT_BUSY: u8 = 75;

/// Exit code of a check that found nothing wrong but could not check everything (`workflow
/// test` with a step it could not describe): never reported as a pass.
pub const EXIT_NOT_CHECKED: u8 = 3;

/// A check that could not be completed: not a failure and not a pass; exits with
/// [`EXIT_NOT_CHECKED`].
#[derive(Debug)]
pub struct NotChecked(pub String);

impl fmt::Display for NotChecked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotChecked {}

/// A mistake in the command line or configuration found after parsing; exits with code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] as the `anyhow::Error` command handlers return (exit code 2).
pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Resolves on Ctrl-C or SIGTERM, whichever comes first.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // Handlers are installed now, not when the future is first polled: a SIGTERM that arrives
    // right after the "listening on" line must already stop the server gracefully.
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = signals;
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {},
                _ = int => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
