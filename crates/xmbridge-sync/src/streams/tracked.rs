//! Items a stream can only read in full one by one (directory contacts, users, distribution
//! histories): their list is read on every run, but an item is read on its own only when it is
//! new, its list element changed, or its periodic refresh is due ([`SyncOptions::refresh_every`]).
//! What was seen is kept in the stream's cursor and committed with the rows.
//!
//! [`SyncOptions::refresh_every`]: crate::SyncOptions::refresh_every

use crate::engine::{Ctx, SyncError};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// The `"v"` of the cursors holding a [`Tracked`]; another value is an older shape, and every
/// item is read again.
pub(crate) const CURSOR_VERSION: u64 = 1;

/// The stream's committed cursor, unless this run must read everything again: `--full`, or a
/// table of `group` had to be created although the cursor says data was loaded.
pub(crate) async fn trusted_cursor(
    ctx: &mut Ctx<'_>,
    stream: &str,
    table: &str,
    group: &str,
) -> Result<Option<Json>, SyncError> {
    let cursor = ctx.cursor(stream, table).await?;
    if ctx.opts.full || (cursor.is_some() && ctx.reload_missing(group)) {
        return Ok(None);
    }
    Ok(cursor)
}

/// What an earlier run saw of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeenItem {
    /// Of the item's element in its list ([`fingerprint`]).
    pub fingerprint: u64,
    /// When it was last read in full (that run's time, epoch ms).
    pub read_ms: i64,
    /// Its modification time at that read, where the item has one (contacts' `lastModified`).
    pub modified: Option<i64>,
}

/// Item id → what was seen. Serialized as one string, a line per item:
/// `<id> <fingerprint, 16 hex> <read_ms>[ <modified>]` — a JSON object of arrays costs several
/// times the memory to parse and build, which matters at a million items.
#[derive(Debug, Default)]
pub(crate) struct Tracked(pub HashMap<String, SeenItem>);

impl Tracked {
    /// `None` when the value is not such a string (an older cursor): every item is read again.
    pub fn parse(v: &Json) -> Option<Tracked> {
        let text = v.as_str()?;
        let mut items = HashMap::with_capacity(text.len() / 48);
        for line in text.lines() {
            let mut f = line.split(' ');
            let id = f.next()?;
            let fingerprint = u64::from_str_radix(f.next()?, 16).ok()?;
            let read_ms = f.next()?.parse().ok()?;
            let modified = match f.next() {
                Some(m) => Some(m.parse().ok()?),
                None => None,
            };
            items.insert(
                id.to_string(),
                SeenItem {
                    fingerprint,
                    read_ms,
                    modified,
                },
            );
        }
        Some(Tracked(items))
    }

    /// The [`Tracked`] under `key` of a cursor of [`CURSOR_VERSION`].
    pub fn from_cursor(cursor: &Json, key: &str) -> Option<Tracked> {
        if cursor.get("v").and_then(Json::as_u64) != Some(CURSOR_VERSION) {
            return None;
        }
        Tracked::parse(cursor.get(key)?)
    }

    /// What the cursor says after a run: every listed item that still exists — those read now
    /// with this run's time (and their modification time), the rest as they were seen. An item
    /// that was to be read but was not (a 404: gone since the list was read) is left out.
    pub fn next(
        seen: Option<&Tracked>,
        listed: &[(String, u64)],
        to_read: &HashSet<&str>,
        read: &HashMap<String, Option<i64>>,
        now_ms: i64,
    ) -> Tracked {
        let mut next = HashMap::with_capacity(listed.len());
        for (id, fp) in listed {
            let entry = match (read.get(id), seen.and_then(|s| s.0.get(id))) {
                (Some(modified), _) => SeenItem {
                    fingerprint: *fp,
                    read_ms: now_ms,
                    modified: *modified,
                },
                (None, Some(old)) if !to_read.contains(id.as_str()) => *old,
                _ => continue,
            };
            next.insert(id.clone(), entry);
        }
        Tracked(next)
    }

    pub fn to_json(&self) -> Json {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.0.len() * 48);
        for (id, i) in &self.0 {
            // Ids come from the API's lists (CID_…, UR_…, EMD_…): no spaces or line breaks.
            let _ = write!(text, "{id} {:016x} {}", i.fingerprint, i.read_ms);
            if let Some(m) = i.modified {
                let _ = write!(text, " {m}");
            }
            text.push('\n');
        }
        Json::String(text)
    }

    /// Whether the item with this list element must be read in full now: new, changed, or due
    /// for its refresh.
    pub fn stale(&self, id: &str, fingerprint: u64, now_ms: i64, interval_ms: i64) -> bool {
        match self.0.get(id) {
            None => true,
            Some(i) => {
                i.fingerprint != fingerprint || refresh_due(id, i.read_ms, now_ms, interval_ms)
            }
        }
    }
}

/// The first 8 bytes of SHA-256: stable across builds and platforms (cursors outlive them).
fn hash64(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Of a list element as the API sent it: any change of any field changes it.
pub(crate) fn fingerprint(element: &Json) -> u64 {
    hash64(element.to_string().as_bytes())
}

/// Whether an item last read at `read_ms` is due for its periodic full read at `now_ms`. Each
/// item has its own phase within the interval (from its id), so after a first load the
/// refreshes spread evenly over the interval instead of all falling on one run; an item is read
/// at least once in every interval. Zero (or less) means always.
pub(crate) fn refresh_due(id: &str, read_ms: i64, now_ms: i64, interval_ms: i64) -> bool {
    if interval_ms <= 0 {
        return true;
    }
    let phase = (hash64(id.as_bytes()) % interval_ms as u64) as i64;
    (now_ms + phase).div_euclid(interval_ms) != (read_ms + phase).div_euclid(interval_ms)
}

/// [`crate::SyncOptions::refresh_every`] in milliseconds.
pub(crate) fn interval_ms(opts: &crate::SyncOptions) -> i64 {
    i64::try_from(opts.refresh_every.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const WEEK: i64 = 7 * 86_400_000;

    #[test]
    fn every_item_is_due_once_per_interval_and_never_twice() {
        for n in 0..200 {
            let id = format!("CID_{n:015}");
            let due: Vec<i64> = (1..=14)
                .map(|h| h * WEEK / 14)
                .filter(|t| refresh_due(&id, 0, *t, WEEK))
                .collect();
            // Checked every half day after a read at 0: due first within the week, and a read
            // at 0 is not due again at 0.
            assert!(!refresh_due(&id, 0, 0, WEEK));
            assert!(!due.is_empty() && due[0] <= WEEK, "{id}: {due:?}");
            assert!(refresh_due(&id, 0, WEEK, WEEK));
        }
        assert!(refresh_due("x", 5, 5, 0));
    }

    #[test]
    fn a_cursor_round_trips_and_an_older_shape_is_refused() {
        let mut t = Tracked::default();
        t.0.insert(
            "a".into(),
            SeenItem {
                fingerprint: u64::MAX,
                read_ms: 7,
                modified: Some(3),
            },
        );
        t.0.insert(
            "b".into(),
            SeenItem {
                fingerprint: 1,
                read_ms: 8,
                modified: None,
            },
        );
        let back = Tracked::parse(&t.to_json()).unwrap();
        assert_eq!(back.0, t.0);
        assert!(Tracked::parse(&json!({"a": ["0", 1]})).is_none());
        assert!(Tracked::parse(&json!("a zz 1\n")).is_none());
        assert_eq!(Tracked::parse(&json!("")).unwrap().0.len(), 0);
    }
}
