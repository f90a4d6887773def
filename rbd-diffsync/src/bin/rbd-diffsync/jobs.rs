//! The job file of `sync-many`: reading it (a file or stdin) and its lines, as text or JSON.

use std::path::Path;

use rbd_diffsync::ErrorKind;

use crate::failure::fail_with;

/// One volume of a job file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JobLine {
    pub(crate) source: String,
    pub(crate) dest: String,
    pub(crate) from_snap: Option<String>,
    pub(crate) force: bool,
    pub(crate) verify: bool,
}

/// The job file at `path`, or on stdin for `-`, read and parsed; a failure is reported (see
/// [`fail_with`]) and its exit status returned.
pub(crate) fn load(path: &Path, json: bool) -> Result<Vec<JobLine>, u8> {
    let text = match read(path) {
        Ok(text) => text,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let message = format!("cannot read the job file {}: {e}", path.display());
            return Err(fail_with(
                ErrorKind::from_errno(errno),
                errno,
                &message,
                json,
            ));
        }
    };
    parse_job(&text)
        .map_err(|message| fail_with(ErrorKind::InvalidArgument, libc::EINVAL, &message, json))
}

/// The text of the file at `path`, or of stdin for `-`.
fn read(path: &Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    }
}

/// Reads a job file (see [`SYNC_MANY_HELP`]); what is wrong with it, if anything.
fn parse_job(text: &str) -> Result<Vec<JobLine>, String> {
    let mut jobs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| format!("job file, line {}: {why}", n + 1);
        let job = if line.starts_with('{') {
            parse_json_line(line)
        } else {
            parse_text_line(line)
        };
        jobs.push(job.map_err(bad)?);
    }
    if jobs.is_empty() {
        return Err("the job file lists no volume".to_owned());
    }
    Ok(jobs)
}

/// A line that is a JSON object; what is wrong with it, if anything.
fn parse_json_line(line: &str) -> Result<JobLine, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    if let Some(obj) = v.as_object() {
        if let Some(k) = obj
            .keys()
            .find(|k| !["source", "dest", "from_snap", "force", "verify"].contains(&k.as_str()))
        {
            return Err(format!("unknown key {k:?}"));
        }
    }
    let flag = |key: &str| match v.get(key) {
        None => Ok(false),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| format!("{key:?} is not true or false")),
    };
    Ok(JobLine {
        source: text("source").ok_or_else(|| "no \"source\" string".to_owned())?,
        dest: text("dest").ok_or_else(|| "no \"dest\" string".to_owned())?,
        from_snap: text("from_snap"),
        force: flag("force")?,
        verify: flag("verify")?,
    })
}

/// A line of words, `SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP]`; what is wrong with it, if
/// anything.
fn parse_text_line(line: &str) -> Result<JobLine, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [source, dest] | [source, dest, _] => Ok(JobLine {
            source: source.to_owned(),
            dest: dest.to_owned(),
            from_snap: words.get(2).map(|s| (*s).to_owned()),
            force: false,
            verify: false,
        }),
        _ => Err("not SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP] nor a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_take_text_and_json_lines() {
        let jobs = parse_job(
            "# volumes\n\nrbd/a@s2 backups/a s1\n  rbd/b@s1\tbackups/b\n\
             {\"source\": \"rbd/c@s2\", \"dest\": \"backups/c\", \"from_snap\": \"s1\", \"force\": true}\n\
             {\"source\": \"rbd/d@s1\", \"dest\": \"backups/d\", \"verify\": true}\n",
        )
        .unwrap();
        let line = |s: &str, d: &str, f: Option<&str>, force, verify| JobLine {
            source: s.into(),
            dest: d.into(),
            from_snap: f.map(Into::into),
            force,
            verify,
        };
        assert_eq!(
            jobs,
            [
                line("rbd/a@s2", "backups/a", Some("s1"), false, false),
                line("rbd/b@s1", "backups/b", None, false, false),
                line("rbd/c@s2", "backups/c", Some("s1"), true, false),
                line("rbd/d@s1", "backups/d", None, false, true),
            ]
        );
        for bad in [
            "a",
            "a b c d",
            "{\"source\": \"a\"}",
            "{\"source\": \"a\", \"dest\": \"b\", \"x\": 1}",
            "{\"source\": \"a\", \"dest\": \"b\", \"verify\": \"yes\"}",
            "{\"source\": \"a\", \"dest\": \"b\", \"force\": 1}",
            "{",
            "# none",
        ] {
            assert!(parse_job(bad).is_err(), "{bad}");
        }
    }
}
