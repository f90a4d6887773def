//! The checks and conversions of arguments that several classes share: image specs, sizes
//! and counts, rates and seconds, each refused with an `InvalidArgumentError`.

use std::time::Duration;

use pyo3::prelude::*;

use rbd_diffsync::ImageSpec;

use crate::exceptions::{invalid, to_py_err};

pub(crate) fn parse_spec(py: Python<'_>, spec: &str) -> PyResult<ImageSpec> {
    ImageSpec::parse(spec).map_err(|e| to_py_err(py, &e))
}

/// `value` as a `T`, which holds every value >= 0 of an `i64` (a size or a count).
pub(crate) fn non_negative<T: TryFrom<i64>>(py: Python<'_>, what: &str, value: i64) -> PyResult<T> {
    T::try_from(value).map_err(|_| invalid(py, format!("{what} {value} is negative")))
}

/// A rate in bytes per second, as the core's settings hold it: None or 0 for no cap (None).
pub(crate) fn rate(py: Python<'_>, value: Option<i64>) -> PyResult<Option<u64>> {
    let rate: u64 = non_negative(py, "rate_limit", value.unwrap_or(0))?;
    Ok((rate > 0).then_some(rate))
}

pub(crate) fn seconds(py: Python<'_>, what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        invalid(
            py,
            format!("{what} {value} is not a number of seconds >= 0"),
        )
    })
}
