//! What an update would put into a room, read from its encoding before it is applied.
//!
//! A room holds one thing: the `files` map of plain texts. A stock Yjs client can send anything
//! else — other root types, embedded objects, formatting, binary, sub-documents — which would
//! escape every size limit, since those count file text. Such an update is refused here, whole,
//! before any of it is kept. The same reading tells whether the update builds on something the
//! room does not have yet (its missing parents): Yjs keeps such parts aside until the rest
//! arrives, so the room bounds how much may wait (see [`Shape::complete_against`]).
//!
//! This mirrors the Yjs v1 update encoding (lib0): per client, a run of blocks from a clock on;
//! then the deletions. Anything this reader does not know is refused rather than guessed.

use std::collections::HashMap;

use yrs::encoding::read::Read;
use yrs::updates::decoder::{Decoder, DecoderV1};
use yrs::{ReadTxn, StateVector, ID};

use crate::room::FILES;

const GC: u8 = 0;
const DELETED: u8 = 1;
const STRING: u8 = 4;
const TYPE: u8 = 7;
const SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
/// The type ref of a `Y.Text`.
const TEXT: u8 = 2;

/// Why an update is refused before it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed update: {0}")]
    Malformed(String),
    #[error("{0}; a room holds only `files`, a map from paths to plain texts")]
    Foreign(String),
}

/// The parts of an update that decide whether it is whole: which clocks it covers, what its
/// blocks build on, and what it deletes.
#[derive(Debug, Default)]
pub struct Shape {
    /// Per client, in order: `(start, end)` of each run of blocks; a skip ends a run.
    runs: HashMap<u64, Vec<(u32, u32)>>,
    /// The ids blocks refer to: origins and parents.
    refs: Vec<(u64, u32)>,
    /// Deleted ranges: `(client, start, end)`.
    deletes: Vec<(u64, u32, u32)>,
}

/// Reads an update, refusing anything a room does not hold.
pub fn inspect(update: &[u8]) -> Result<Shape, Refusal> {
    read(&mut DecoderV1::from(update)).map_err(|e| match e {
        Error::Yrs(e) => Refusal::Malformed(e.to_string()),
        Error::Refused(r) => r,
    })
}

enum Error {
    Yrs(yrs::encoding::read::Error),
    Refused(Refusal),
}

impl From<yrs::encoding::read::Error> for Error {
    fn from(e: yrs::encoding::read::Error) -> Self {
        Error::Yrs(e)
    }
}

fn foreign(what: impl Into<String>) -> Error {
    Error::Refused(Refusal::Foreign(what.into()))
}

fn read(d: &mut DecoderV1) -> Result<Shape, Error> {
    let mut shape = Shape::default();
    let clients: u32 = d.read_var()?;
    for _ in 0..clients {
        let blocks: u32 = d.read_var()?;
        let client = d.read_client()?.get();
        let mut clock: u32 = d.read_var()?;
        let mut run = (clock, clock);
        for _ in 0..blocks {
            let info = d.read_info()?;
            let len = match info & 0b1_1111 {
                SKIP => {
                    let len: u32 = d.read_var()?;
                    push_run(&mut shape, client, run);
                    run = (clock + len, clock + len);
                    clock += len;
                    continue;
                }
                GC => d.read_len()?,
                _ => read_item(d, info, &mut shape)?,
            };
            if len == 0 {
                return Err(Error::Refused(Refusal::Malformed("an empty block".into())));
            }
            clock = clock
                .checked_add(len)
                .ok_or_else(|| foreign("a clock past 2^32"))?;
            run.1 = clock;
        }
        push_run(&mut shape, client, run);
    }
    let clients: u32 = d.read_var()?;
    for _ in 0..clients {
        d.reset_ds_cur_val();
        let client: u64 = d.read_var()?;
        let ranges: u32 = d.read_var()?;
        for _ in 0..ranges {
            let start = d.read_ds_clock()?;
            let len = d.read_ds_len()?;
            shape
                .deletes
                .push((client, start, start.saturating_add(len)));
        }
    }
    Ok(shape)
}

fn push_run(shape: &mut Shape, client: u64, run: (u32, u32)) {
    if run.1 > run.0 {
        shape.runs.entry(client).or_default().push(run);
    }
}

/// Reads one item; returns its length in clock ticks.
fn read_item(d: &mut DecoderV1, info: u8, shape: &mut Shape) -> Result<u32, Error> {
    let mut reference = |id: ID| shape.refs.push((id.client.get(), id.clock));
    if info & HAS_ORIGIN != 0 {
        reference(d.read_left_id()?);
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        reference(d.read_right_id()?);
    }
    // Without an origin the parent is written out: a root type by name, or a nested type by id.
    // With one, the item sits beside an item that is already in the room (or in this update),
    // under the same parent.
    let mut in_files_map = false;
    let mut nested = false;
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if d.read_parent_info()? {
            let root = d.read_string()?;
            if root != FILES {
                return Err(foreign(format!("a root type {root:?}")));
            }
            in_files_map = true;
        } else {
            reference(d.read_left_id()?);
            nested = true;
        }
        if info & HAS_PARENT_SUB != 0 {
            let key = d.read_string()?;
            if nested {
                return Err(foreign(format!("a map entry {key:?} inside a file")));
            }
        } else if in_files_map {
            return Err(foreign("`files` used as a list"));
        }
    }
    match info & 0b1111 {
        DELETED => Ok(d.read_len()?),
        STRING => {
            if in_files_map {
                return Err(foreign("a string where a file's text belongs"));
            }
            // Its length in UTF-16 code units, as Yjs counts clocks.
            Ok(d.read_string()?.encode_utf16().count() as u32)
        }
        TYPE => match d.read_type_ref()? {
            TEXT if nested => Err(foreign("a text inside a file")),
            TEXT => Ok(1),
            other => Err(foreign(format!("a shared type (type ref {other})"))),
        },
        other => Err(foreign(match other {
            2 | 8 => "a JSON value".to_string(),
            3 => "binary content".to_string(),
            5 => "an embedded object".to_string(),
            6 => "formatting".to_string(),
            9 => "a sub-document".to_string(),
            other => format!("content of an unknown kind ({other})"),
        })),
    }
}

impl Shape {
    /// True when everything the update builds on is in `txn`'s document or in the update
    /// itself: applying it leaves nothing waiting for missing parents.
    pub fn complete_against<T: ReadTxn>(&self, txn: &T) -> bool {
        let known = txn.state_vector();
        self.complete(&known)
    }

    fn complete(&self, known: &StateVector) -> bool {
        let mut available: HashMap<u64, u32> = HashMap::new();
        let have = |client: u64| known.get(&yrs::ClientID::new(client));
        for (client, runs) in &self.runs {
            let mut end = have(*client);
            for (start, stop) in runs {
                if *start > end {
                    return false;
                }
                end = end.max(*stop);
            }
            available.insert(*client, end);
        }
        let reach = |client: u64| {
            available
                .get(&client)
                .copied()
                .unwrap_or_else(|| have(client))
        };
        self.refs
            .iter()
            .all(|(client, clock)| *clock < reach(*client))
            && self
                .deletes
                .iter()
                .all(|(client, _, end)| *end <= reach(*client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Array, Doc, Map, Text, TextPrelim, Transact, WriteTxn};

    fn update(f: impl FnOnce(&mut yrs::TransactionMut)) -> Vec<u8> {
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        f(&mut txn);
        txn.encode_update_v1()
    }

    #[test]
    fn plain_text_in_files_is_accepted() {
        let bytes = update(|txn| {
            let files = txn.get_or_insert_map(FILES);
            let text = files.insert(txn, "a.txt", TextPrelim::new("héllo 🎉"));
            text.insert(txn, 1, "x");
            text.remove_range(txn, 0, 1);
            files.insert(txn, "b.txt", TextPrelim::new(""));
            files.remove(txn, "b.txt");
        });
        let shape = inspect(&bytes).expect("accepted");
        assert!(shape.complete(&StateVector::default()));
    }

    #[test]
    fn anything_else_is_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "root",
                update(|txn| {
                    let other = txn.get_or_insert_map("notfiles");
                    other.insert(txn, "k", "q".repeat(10));
                }),
            ),
            (
                "JSON",
                update(|txn| {
                    let files = txn.get_or_insert_map(FILES);
                    files.insert(txn, "a.txt", "text");
                }),
            ),
            (
                "embedded",
                update(|txn| {
                    let files = txn.get_or_insert_map(FILES);
                    let text = files.insert(txn, "a.txt", TextPrelim::new("ab"));
                    text.insert_embed(txn, 1, yrs::Any::from("x".repeat(100)));
                }),
            ),
            (
                "formatting",
                update(|txn| {
                    let files = txn.get_or_insert_map(FILES);
                    let text = files.insert(txn, "a.txt", TextPrelim::new("ab"));
                    let bold = yrs::types::Attrs::from([("bold".into(), true.into())]);
                    text.format(txn, 0, 1, bold);
                }),
            ),
            (
                "shared type",
                update(|txn| {
                    let files = txn.get_or_insert_map(FILES);
                    files.insert(txn, "a.txt", yrs::ArrayPrelim::default());
                }),
            ),
            (
                "list",
                update(|txn| {
                    let list = txn.get_or_insert_array(FILES);
                    list.insert(txn, 0, 1);
                }),
            ),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(inspect(&bytes), Err(Refusal::Foreign(_))),
                "{what}: {:?}",
                inspect(&bytes).map(|_| ())
            );
        }
        assert!(matches!(inspect(&[1, 2, 3]), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn an_update_whose_parents_are_missing_is_incomplete() {
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        let first = {
            let mut txn = doc.transact_mut();
            files.insert(&mut txn, "a.txt", TextPrelim::new("start"));
            txn.encode_update_v1()
        };
        let after_first = doc.transact().state_vector();
        let second = {
            let mut txn = doc.transact_mut();
            let Some(yrs::Out::YText(text)) = files.get(&txn, "a.txt") else {
                panic!()
            };
            text.insert(&mut txn, 5, " more");
            text.remove_range(&mut txn, 0, 2);
            txn.encode_update_v1()
        };
        let empty = StateVector::default();
        assert!(inspect(&first).unwrap().complete(&empty));
        assert!(!inspect(&second).unwrap().complete(&empty));
        assert!(inspect(&second).unwrap().complete(&after_first));
        let both = yrs::merge_updates_v1([first.as_slice(), second.as_slice()]).unwrap();
        assert!(inspect(&both).unwrap().complete(&empty));
    }
}
