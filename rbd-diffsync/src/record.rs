//! The in-progress record: image metadata on the destination naming the transfer that writes
//! into it, set before its first write and removed once its end snapshot exists. A rerun after
//! an interruption reads it to tell its predecessor's writes (which it may continue over) from
//! anybody else's (which it refuses), and to recognise the predecessor's lock.

use std::fmt::Write as _;

/// The metadata key (`rbd image-meta get IMAGE rbd_diffsync.in_progress`).
pub const KEY: &str = "rbd_diffsync.in_progress";

/// The metadata key naming the client that takes the destination's lock for a transfer, set
/// before that client opens the destination for writing (which registers its watch): from
/// then on, even before the checks and the in-progress record, a rerun recognises the watch
/// and the lock of its killed predecessor. It names a lock holder, nothing about the data,
/// and goes with the record.
pub const HOLDER_KEY: &str = "rbd_diffsync.lock_holder";

/// A snapshot of the source, by id (what stays true) and name (what messages show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapRef {
    pub id: u64,
    pub name: String,
}

/// Which transfer writes into a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The source image: cluster fsid, pool id, namespace and image id, which survive renames.
    pub fsid: String,
    pub pool_id: i64,
    pub namespace: String,
    pub image_id: String,
    /// `pool[/namespace]/image` of the source when the transfer started, for messages.
    pub source: String,
    /// The base of an incremental; `None` for a full transfer.
    pub from: Option<SnapRef>,
    /// The end snapshot; `None` when the source was read at HEAD.
    pub end: Option<SnapRef>,
    /// The destination client's address (with its nonce, unique to the process), which
    /// names it as the lock owner.
    pub client: String,
    /// When the transfer started, in seconds since the epoch.
    pub started: u64,
    /// The checkpoint: every piece of the transfer below this offset has been written (and
    /// flushed). Only ever behind the writes; 0 until the first checkpoint.
    pub done: u64,
}

/// Why a recorded transfer is not one the new transfer may continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mismatch {
    OtherSource(String),
    OtherBase(Option<String>),
    OlderEnd(String),
}

impl Mismatch {
    /// What the record says, for a message that starts "the destination was written by".
    pub(crate) fn describe(&self) -> String {
        match self {
            Mismatch::OtherSource(source) => {
                format!("an interrupted transfer from another image ({source})")
            }
            Mismatch::OtherBase(Some(from)) => {
                format!("an interrupted incremental from another base snapshot ({from:?})")
            }
            Mismatch::OtherBase(None) => "an interrupted full transfer".to_owned(),
            Mismatch::OlderEnd(end) => format!(
                "an interrupted transfer up to snapshot {end:?}, which is newer than this one's end"
            ),
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._-/:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn snap_field(snap: &Option<SnapRef>) -> String {
    match snap {
        Some(s) => format!("{}:{}", s.id, escape(&s.name)),
        None => "-".to_owned(),
    }
}

fn parse_snap(value: &str) -> Option<Option<SnapRef>> {
    if value == "-" {
        return Some(None);
    }
    let (id, name) = value.split_once(':')?;
    Some(Some(SnapRef {
        id: id.parse().ok()?,
        name: unescape(name)?,
    }))
}

impl Record {
    /// One line of `key=value` fields, values percent-escaped.
    pub(crate) fn encode(&self) -> String {
        format!(
            "v=1 fsid={} pool={} ns={} image={} source={} from={} end={} client={} started={} \
             done={}",
            escape(&self.fsid),
            self.pool_id,
            escape(&self.namespace),
            escape(&self.image_id),
            escape(&self.source),
            snap_field(&self.from),
            snap_field(&self.end),
            escape(&self.client),
            self.started,
            self.done,
        )
    }

    /// The record in `text`, or `None` if it is not one this version can read (then nothing
    /// is continued over on its word).
    pub(crate) fn decode(text: &str) -> Option<Record> {
        let mut fields = std::collections::HashMap::new();
        for field in text.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            fields.insert(key, value);
        }
        if fields.get("v") != Some(&"1") {
            return None;
        }
        let get = |key: &str| fields.get(key).copied();
        Some(Record {
            fsid: unescape(get("fsid")?)?,
            pool_id: get("pool")?.parse().ok()?,
            namespace: unescape(get("ns")?)?,
            image_id: unescape(get("image")?)?,
            source: unescape(get("source")?)?,
            from: parse_snap(get("from")?)?,
            end: parse_snap(get("end")?)?,
            client: unescape(get("client")?)?,
            started: get("started")?.parse().ok()?,
            // Records written before checkpoints existed have none: nothing is known done.
            done: match get("done") {
                Some(done) => done.parse().ok()?,
                None => 0,
            },
        })
    }

    /// Whether this transfer may continue over the writes of the interrupted transfer
    /// `earlier`: the same source image, the same base, and an end snapshot not older than
    /// the one it was writing (a retry may use a newer one; HEAD only follows HEAD).
    pub(crate) fn may_continue(&self, earlier: &Record) -> Result<(), Mismatch> {
        let same_image = self.fsid == earlier.fsid
            && self.pool_id == earlier.pool_id
            && self.namespace == earlier.namespace
            && self.image_id == earlier.image_id;
        if !same_image {
            return Err(Mismatch::OtherSource(earlier.source.clone()));
        }
        if self.from.as_ref().map(|s| s.id) != earlier.from.as_ref().map(|s| s.id) {
            return Err(Mismatch::OtherBase(
                earlier.from.as_ref().map(|s| s.name.clone()),
            ));
        }
        match (&self.end, &earlier.end) {
            (Some(end), Some(before)) if end.id < before.id => {
                Err(Mismatch::OlderEnd(before.name.clone()))
            }
            (Some(_), None) => Err(Mismatch::OlderEnd("HEAD".to_owned())),
            _ => Ok(()),
        }
    }

    /// Where this transfer may resume `earlier`'s work: its checkpoint, when both move the
    /// same diff (the same source image, base and end snapshot, by id); 0 otherwise. A source
    /// read at HEAD may have changed since, so its checkpoints are never used.
    pub(crate) fn resume_offset(&self, earlier: &Record) -> u64 {
        let same_diff = self.may_continue(earlier).is_ok()
            && self.end.is_some()
            && self.end.as_ref().map(|s| s.id) == earlier.end.as_ref().map(|s| s.id);
        if same_diff {
            earlier.done
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            fsid: "0b7f-1".into(),
            pool_id: 3,
            namespace: String::new(),
            image_id: "10ab".into(),
            source: "volumes/volume 1".into(),
            from: Some(SnapRef {
                id: 4,
                name: "backup.1.snap=2; x%".into(),
            }),
            end: Some(SnapRef {
                id: 9,
                name: "s9".into(),
            }),
            client: "127.0.0.1:0/4242".into(),
            started: 1_700_000_000,
            done: 48 << 20,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_whatever_its_names_hold() {
        let r = record();
        let text = r.encode();
        assert!(!text.contains("snap=2"), "{text}");
        assert_eq!(Record::decode(&text), Some(r.clone()));
        let full = Record {
            from: None,
            end: None,
            ..r
        };
        assert_eq!(Record::decode(&full.encode()), Some(full));
    }

    #[test]
    fn a_record_without_a_checkpoint_has_nothing_done() {
        let text = record().encode().replace(" done=50331648", "");
        assert_eq!(Record::decode(&text).map(|r| r.done), Some(0));
        let bad = record().encode().replace("done=50331648", "done=x");
        assert_eq!(Record::decode(&bad), None);
    }

    #[test]
    fn a_checkpoint_is_used_only_for_the_same_diff() {
        let earlier = record();
        let mut same = record();
        same.client = "127.0.0.1:0/9".into();
        same.done = 0;
        assert_eq!(same.resume_offset(&earlier), 48 << 20);
        let mut later = record();
        later.end = Some(SnapRef {
            id: 12,
            name: "s12".into(),
        });
        assert_eq!(later.resume_offset(&earlier), 0);
        let mut other_base = record();
        other_base.from = None;
        assert_eq!(other_base.resume_offset(&earlier), 0);
        let mut other_image = record();
        other_image.image_id = "99".into();
        assert_eq!(other_image.resume_offset(&earlier), 0);
        let head = Record {
            end: None,
            ..record()
        };
        assert_eq!(head.resume_offset(&head.clone()), 0);
    }

    #[test]
    fn unreadable_records_are_not_trusted() {
        for bad in ["", "v=2 fsid=x", "v=1 fsid=x", "garbage", "v=1 fsid=%zz"] {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_same_source_and_base_with_a_later_end_continue() {
        let earlier = record();
        let mut same = record();
        same.client = "other".into();
        assert_eq!(same.may_continue(&earlier), Ok(()));
        let mut later = record();
        later.end = Some(SnapRef {
            id: 12,
            name: "s12".into(),
        });
        assert_eq!(later.may_continue(&earlier), Ok(()));
        let mut older = record();
        older.end = Some(SnapRef {
            id: 8,
            name: "s8".into(),
        });
        assert_eq!(
            older.may_continue(&earlier),
            Err(Mismatch::OlderEnd("s9".into()))
        );
        let mut other_image = record();
        other_image.image_id = "99".into();
        assert!(matches!(
            other_image.may_continue(&earlier),
            Err(Mismatch::OtherSource(_))
        ));
        let mut other_cluster = record();
        other_cluster.fsid = "f".into();
        assert!(other_cluster.may_continue(&earlier).is_err());
        let mut other_base = record();
        other_base.from = Some(SnapRef {
            id: 5,
            name: "x".into(),
        });
        assert!(matches!(
            other_base.may_continue(&earlier),
            Err(Mismatch::OtherBase(Some(_)))
        ));
        let mut full = record();
        full.from = None;
        assert!(full.may_continue(&earlier).is_err());
        let mut head = record();
        head.end = None;
        assert_eq!(head.may_continue(&earlier), Ok(()));
        assert!(earlier.may_continue(&head).is_err());
    }
}
