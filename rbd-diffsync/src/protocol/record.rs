//! What a transfer writes about itself into the destination's header, in one format:
//!
//! - the **claim** (`rbd_diffsync.lock_holder`), set atomically before the transfer opens the
//!   destination for writing: which client is about to write, and for which transfer. A rerun
//!   after a kill recognises its predecessor's watch and lock by it, even before that
//!   predecessor wrote anything, and two transfers never both hold it;
//! - the **in-progress record** (`rbd_diffsync.in_progress`), set before the first write and
//!   removed with the claim once the end snapshot exists: which transfer wrote into the
//!   destination, and its checkpoint. A rerun reads it to tell its predecessor's writes (which
//!   it may continue over) from anybody else's (which it refuses).
//!
//! Both name the transfer (the source image by cluster fsid, pool id, namespace and image id,
//! which survive renames, and its base and end snapshots by id) and the client (its address,
//! and the host, pid and start time of its process, so that a rerun on the same host tells a
//! process that ended from one that is only slow or stopped).

use std::fmt::Write as _;

/// The metadata key of the in-progress record (`rbd image-meta get IMAGE
/// rbd_diffsync.in_progress`).
pub const KEY: &str = "rbd_diffsync.in_progress";

/// The metadata key of the claim (see the module documentation). It names a writer, nothing
/// about the data, and goes with the record.
pub const HOLDER_KEY: &str = "rbd_diffsync.lock_holder";

/// A snapshot of the source, by id (what stays true) and name (what messages show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapRef {
    pub id: u64,
    pub name: String,
}

/// A client of the destination's cluster, as a claim or record names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Client {
    /// Its address (with its nonce, unique to the connection), which names it as a watcher
    /// and a lock owner.
    pub address: String,
    /// The host and pid namespace its process runs in (`boot id/pid namespace`); empty when
    /// unknown (a claim written by an older version).
    pub host: String,
    /// Its process.
    pub pid: u32,
    /// When its process started (clock ticks since boot), which tells it from a later
    /// process with the same pid.
    pub start: u64,
    /// Whether other transfers share its connection (a batch's): such a connection is never
    /// fenced while its process may be alive.
    pub shared: bool,
}

/// Which transfer writes, or is about to write, into a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The source image: cluster fsid, pool id, namespace and image id. Empty for a claim of
    /// an older version, which named only its client.
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
    /// The client that writes.
    pub client: Client,
    /// When the transfer started, in seconds since the epoch.
    pub started: u64,
    /// The checkpoint: every piece of the transfer below this offset has been written (and
    /// flushed), and is known to read as the source (see [`Record::resume_offset`]). Only
    /// ever behind the writes; 0 until the first checkpoint.
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
    /// A claim or record that names only a client: what an older version's claim says.
    pub(crate) fn of_client(address: &str) -> Record {
        Record {
            fsid: String::new(),
            pool_id: -1,
            namespace: String::new(),
            image_id: String::new(),
            source: String::new(),
            from: None,
            end: None,
            client: Client {
                address: address.to_owned(),
                ..Client::default()
            },
            started: 0,
            done: 0,
        }
    }

    /// One line of `key=value` fields, values percent-escaped.
    pub(crate) fn encode(&self) -> String {
        let c = &self.client;
        format!(
            "v=2 fsid={} pool={} ns={} image={} source={} from={} end={} client={} host={} \
             pid={} pstart={} shared={} started={} done={}",
            escape(&self.fsid),
            self.pool_id,
            escape(&self.namespace),
            escape(&self.image_id),
            escape(&self.source),
            snap_field(&self.from),
            snap_field(&self.end),
            escape(&c.address),
            escape(&c.host),
            c.pid,
            c.start,
            u8::from(c.shared),
            self.started,
            self.done,
        )
    }

    /// The record in `text`, or `None` if it is not one this version can read (then nothing
    /// is continued over on its word). Records of version 1 (no process fields, perhaps no
    /// checkpoint) are read too.
    pub(crate) fn decode(text: &str) -> Option<Record> {
        let mut fields = std::collections::HashMap::new();
        for field in text.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            fields.insert(key, value);
        }
        let version = *fields.get("v")?;
        if version != "1" && version != "2" {
            return None;
        }
        let get = |key: &str| fields.get(key).copied();
        let number = |key: &str| -> Option<u64> {
            match get(key) {
                Some(value) => value.parse().ok(),
                None if version == "1" => Some(0),
                None => None,
            }
        };
        Some(Record {
            fsid: unescape(get("fsid")?)?,
            pool_id: get("pool")?.parse().ok()?,
            namespace: unescape(get("ns")?)?,
            image_id: unescape(get("image")?)?,
            source: unescape(get("source")?)?,
            from: parse_snap(get("from")?)?,
            end: parse_snap(get("end")?)?,
            client: Client {
                address: unescape(get("client")?)?,
                host: get("host").map_or(Some(String::new()), unescape)?,
                pid: u32::try_from(number("pid")?).ok()?,
                start: number("pstart")?,
                shared: number("shared")? == 1,
            },
            started: get("started")?.parse().ok()?,
            // Records written before checkpoints existed have none: nothing is known done.
            done: number("done")?,
        })
    }

    /// A claim as found in the destination's header: this format, or an older version's
    /// bare client address; `None` for an empty value.
    pub(crate) fn decode_claim(text: &str) -> Option<Record> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Record::decode(text).or_else(|| {
            (!text.contains(char::is_whitespace) && !text.contains('='))
                .then(|| Record::of_client(text))
        })
    }

    fn same_image(&self, other: &Record) -> bool {
        self.fsid == other.fsid
            && self.pool_id == other.pool_id
            && self.namespace == other.namespace
            && self.image_id == other.image_id
    }

    /// Whether this transfer may continue over the writes of the interrupted transfer
    /// `earlier`: the same source image, the same base, and an end snapshot not older than
    /// the one it was writing (a retry may use a newer one; HEAD only follows HEAD).
    pub(crate) fn may_continue(&self, earlier: &Record) -> Result<(), Mismatch> {
        if !self.same_image(earlier) {
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

    /// Whether `earlier` is this transfer's own predecessor: the run the operator repeats,
    /// which this one may continue over (a full transfer also over one with a later end: it
    /// rewrites everything anyway). Only such a predecessor is ever fenced off.
    pub(crate) fn repeats(&self, earlier: &Record) -> bool {
        match self.may_continue(earlier) {
            Ok(()) => true,
            Err(Mismatch::OlderEnd(_)) => self.from.is_none(),
            Err(_) => false,
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
            client: Client {
                address: "127.0.0.1:0/4242".into(),
                host: "0e1c-boot/4026531836".into(),
                pid: 4242,
                start: 123_456,
                shared: false,
            },
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
            client: Client {
                shared: true,
                ..r.client.clone()
            },
            ..r
        };
        assert_eq!(Record::decode(&full.encode()), Some(full));
    }

    #[test]
    fn a_version_1_record_reads_without_its_process_and_checkpoint() {
        let text = "v=1 fsid=f pool=3 ns= image=10ab source=rbd/a from=- end=9:s9 \
                    client=127.0.0.1:0/7 started=5";
        let r = Record::decode(text).unwrap();
        assert_eq!((r.done, r.client.pid, r.client.host.as_str()), (0, 0, ""));
        assert_eq!(r.client.address, "127.0.0.1:0/7");
        let bad = record().encode().replace("done=50331648", "done=x");
        assert_eq!(Record::decode(&bad), None);
        let missing = record().encode().replace(" pid=4242", "");
        assert_eq!(
            Record::decode(&missing),
            None,
            "version 2 names its process"
        );
    }

    #[test]
    fn a_claim_of_an_older_version_names_its_client_only() {
        let claim = Record::decode_claim("127.0.0.1:0/42").unwrap();
        assert_eq!(claim.client.address, "127.0.0.1:0/42");
        assert!(claim.image_id.is_empty());
        assert!(!record().repeats(&claim));
        assert_eq!(Record::decode_claim(""), None);
        assert_eq!(Record::decode_claim("v=7 x=y"), None);
        assert_eq!(Record::decode_claim(&record().encode()), Some(record()));
    }

    #[test]
    fn a_checkpoint_is_used_only_for_the_same_diff() {
        let earlier = record();
        let mut same = record();
        same.client.address = "127.0.0.1:0/9".into();
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
        for bad in ["", "v=3 fsid=x", "v=1 fsid=x", "garbage", "v=1 fsid=%zz"] {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_the_same_source_and_base_with_a_later_end_continue() {
        let earlier = record();
        let mut same = record();
        same.client.address = "other".into();
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
        assert!(
            !older.repeats(&earlier),
            "an older incremental is not a rerun"
        );
        let mut other_image = record();
        other_image.image_id = "99".into();
        assert!(matches!(
            other_image.may_continue(&earlier),
            Err(Mismatch::OtherSource(_))
        ));
        assert!(!other_image.repeats(&earlier));
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

    #[test]
    fn a_full_transfer_repeats_an_interrupted_full_one_whatever_its_end() {
        let mut earlier = record();
        earlier.from = None;
        let mut older = earlier.clone();
        older.end = Some(SnapRef {
            id: 2,
            name: "s2".into(),
        });
        assert!(older.repeats(&earlier));
        assert!(earlier.repeats(&older));
    }
}
