//! What a transfer and a verification share: their settings (the clusters, the I/O settings,
//! the progress interval and the token of cancel()) and the core builders those apply to.

use std::time::Duration;

use pyo3::prelude::*;

use rbd_diffsync as core;
use rbd_diffsync::CancelToken;

use crate::args::{non_negative, seconds};
use crate::bridge::{run_bridged, Hook, Reporting};
use crate::cluster::PyClusterSpec;

/// What a transfer and a verification are both given: the core's settings and the token of
/// cancel().
pub(crate) struct Settings {
    pub(crate) core: core::Settings,
    pub(crate) token: CancelToken,
}

impl Settings {
    /// The settings of the keywords every job has; the others keep their defaults.
    pub(crate) fn new(
        py: Python<'_>,
        cluster: Option<PyRef<'_, PyClusterSpec>>,
        dest_cluster: Option<PyRef<'_, PyClusterSpec>>,
        chunk_size: i64,
        window: i64,
        progress_interval: f64,
    ) -> PyResult<Self> {
        let mut settings = core::Settings::default();
        settings.cluster = cluster.map(|c| c.inner.clone()).unwrap_or_default();
        settings.dest_cluster = dest_cluster.map(|c| c.inner.clone());
        settings.chunk_size = non_negative(py, "chunk_size", chunk_size)?;
        settings.window = non_negative(py, "window", window)?;
        settings.progress_interval = seconds(py, "progress_interval", progress_interval)?;
        Ok(Settings {
            core: settings,
            token: CancelToken::new(),
        })
    }

    /// `job` with these settings and token.
    pub(crate) fn apply<J: Job>(&self, job: J) -> J {
        job.settings(self.core.clone())
            .cancel_token(self.token.clone())
    }

    /// Runs `f` on `builder` as [`run_bridged`] does, at this progress interval.
    pub(crate) fn run<B: Reporting, T: Send>(
        &self,
        py: Python<'_>,
        progress: Option<Py<PyAny>>,
        builder: B,
        f: impl FnOnce(B) -> core::Result<T> + Send,
    ) -> PyResult<T> {
        run_bridged(py, progress, self.core.progress_interval, builder, f)
    }
}

/// A core builder that [`Settings`] apply to: a transfer or a verification.
pub(crate) trait Job: Send + Sized {
    fn settings(self, settings: core::Settings) -> Self;
    fn cancel_token(self, token: CancelToken) -> Self;
    fn progress_interval(self, interval: Duration) -> Self;
    fn on_progress(self, hook: Hook<core::Progress>) -> Self;
}

macro_rules! job {
    ($t:ty) => {
        impl Job for $t {
            fn settings(self, settings: core::Settings) -> Self {
                <$t>::settings(self, settings)
            }
            fn cancel_token(self, token: CancelToken) -> Self {
                <$t>::cancel_token(self, token)
            }
            fn progress_interval(self, interval: Duration) -> Self {
                <$t>::progress_interval(self, interval)
            }
            fn on_progress(self, hook: Hook<core::Progress>) -> Self {
                <$t>::on_progress(self, hook)
            }
        }
    };
}
job!(core::DiffTransfer);
job!(core::Verify);

impl<J: Job> Reporting for J {
    type Progress = core::Progress;
    fn reporting(self, interval: Duration, hook: Hook<core::Progress>) -> Self {
        self.progress_interval(interval).on_progress(hook)
    }
}
