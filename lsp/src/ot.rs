//! Text operations and their transformation, counted in chars (Unicode scalar values).
//!
//! An [`Operation`] turns a text of `base_len` chars into one of `target_len` chars by walking
//! it once: [`Component::Retain`] keeps chars, [`Component::Insert`] adds text,
//! [`Component::Delete`] drops chars. It is the currency between the editor's shadow and the
//! CRDT text in [`crate::shadow`]: user edits, remote edits and the `pending` difference
//! between the two texts are all operations.
//!
//! - [`Operation::apply`], [`Operation::compose`], [`Operation::transform`] and
//!   [`Operation::invert`] are the classic OT toolkit (the `ot.js` algorithms). `transform`
//!   takes a [`Tie`] that says whose insert goes first when both insert at the same place;
//!   with it, `transform` satisfies TP1: `b'(a(s)) == a'(b(s))`.
//! - Conversions to and from contiguous edits ([`Edit`]: a char range and its replacement),
//!   the form LSP speaks; and to and from UTF-16-counted components, the form Yjs speaks.
//!
//! Operations are kept canonical (no empty components, neighbours of a kind merged, an insert
//! before a delete at the same place), so equal effects compare equal as values only when
//! they were built the same way: [`Operation::simplify`] trims replacements that re-insert
//! what they delete.
//!
//! Limits: offsets are chars, not grapheme clusters (an edit may split "e" from a combining
//! accent, as editors themselves do); lengths that do not fit are errors ([`OpError`]), never
//! panics.

use std::time::{Duration, Instant};

use ropey::Rope;
use thiserror::Error;

/// One step of an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    /// Keep this many chars.
    Retain(usize),
    /// Insert this text.
    Insert(String),
    /// Delete this many chars.
    Delete(usize),
}

/// Whose insert goes first when two concurrent operations insert at the same position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tie {
    /// The first argument's insert goes first (before the second's).
    AFirst,
    /// The second argument's insert goes first.
    BFirst,
}

/// A contiguous replacement: chars `start..end` of the base text become `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

impl Edit {
    pub fn new(start: usize, end: usize, text: impl Into<String>) -> Self {
        Edit {
            start,
            end,
            text: text.into(),
        }
    }

    /// Number of chars inserted.
    pub fn inserted_chars(&self) -> usize {
        self.text.chars().count()
    }
}

/// Operations that do not fit the text or each other. Each one is a bug in the caller or a
/// lost message: the remedy is to resynchronise from a full text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpError {
    #[error("operation expects a text of {expected} chars but the text has {actual}")]
    BaseLength { expected: usize, actual: usize },
    #[error("cannot compose: the first operation yields {first_target} chars, the second expects {second_base}")]
    Compose {
        first_target: usize,
        second_base: usize,
    },
    #[error("cannot transform: the operations start from texts of {a_base} and {b_base} chars")]
    Transform { a_base: usize, b_base: usize },
    #[error("edit {start}..{end} does not fit a text of {len} chars (edits must be in order and not overlap)")]
    EditOutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("UTF-16 offset {offset} is past the text or splits a surrogate pair")]
    Utf16Offset { offset: usize },
}

/// A sequence of components turning a text of `base_len` chars into one of `target_len`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    components: Vec<Component>,
    base_len: usize,
    target_len: usize,
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Splits `s` after `n` chars (`n` <= char length).
fn split_chars(s: &str, n: usize) -> (&str, &str) {
    let at = s.char_indices().nth(n).map_or(s.len(), |(i, _)| i);
    s.split_at(at)
}

/// A component with a partly consumed remainder, used while walking two operations at once.
fn take(c: &mut Option<Component>, n: usize, rest: &mut impl Iterator<Item = Component>) {
    // Consumes `n` units (chars) of the current component; moves on when it is used up.
    match c {
        Some(Component::Retain(m)) | Some(Component::Delete(m)) if *m > n => *m -= n,
        Some(Component::Insert(s)) if char_len(s) > n => {
            *s = split_chars(s, n).1.to_string();
        }
        _ => *c = rest.next(),
    }
}

fn len_of(c: &Component) -> usize {
    match c {
        Component::Retain(n) | Component::Delete(n) => *n,
        Component::Insert(s) => char_len(s),
    }
}

impl Operation {
    /// The empty operation on the empty text.
    pub fn new() -> Self {
        Operation::default()
    }

    /// The operation that keeps a text of `len` chars as it is.
    pub fn identity(len: usize) -> Self {
        let mut op = Operation::new();
        op.retain(len);
        op
    }

    /// Replaces chars `start..end` of a text of `base_len` chars with `text`.
    pub fn replace(base_len: usize, start: usize, end: usize, text: &str) -> Result<Self, OpError> {
        Operation::from_edits(base_len, &[Edit::new(start, end, text)])
    }

    /// Replaces chars `start..end` of `base` with `text`, leaving out what stays as it was:
    /// Neovim reports changes as line diffs whose range can cover text that stays, and
    /// re-inserting that text would give it new identities in the CRDT (a peer's concurrent
    /// edit inside it would then be lost or land twice, and its cursor lose its place). First
    /// what the replaced and the new text have in common at either end; then, if both span
    /// lines (`:%s`, a formatter, a reload), every line that stays (a line diff), and within
    /// lines replaced one for one, what each keeps at either end.
    pub fn replace_trimmed(
        base: &Rope,
        start: usize,
        end: usize,
        text: &str,
    ) -> Result<Self, OpError> {
        if start > end || end > base.len_chars() {
            return Err(OpError::EditOutOfRange {
                start,
                end,
                len: base.len_chars(),
            });
        }
        let edits = match trim_edit(base, Edit::new(start, end, text)) {
            None => Vec::new(),
            Some(e)
                if e.text.contains('\n')
                    && base.slice(e.start..e.end).chars().any(|c| c == '\n') =>
            {
                line_edits(base, e)
            }
            Some(e) => vec![align_to_lines(base, e)],
        };
        Operation::from_edits(base.len_chars(), &edits)
    }

    /// Builds an operation from edits on a text of `base_len` chars, given in base
    /// coordinates, in order and not overlapping (touching is fine).
    pub fn from_edits(base_len: usize, edits: &[Edit]) -> Result<Self, OpError> {
        let mut op = Operation::new();
        let mut pos = 0;
        for e in edits {
            if e.start < pos || e.start > e.end || e.end > base_len {
                return Err(OpError::EditOutOfRange {
                    start: e.start,
                    end: e.end,
                    len: base_len,
                });
            }
            op.retain(e.start - pos);
            op.insert(&e.text);
            op.delete(e.end - e.start);
            pos = e.end;
        }
        op.retain(base_len - pos);
        Ok(op)
    }

    /// How many chars this operation deletes and inserts.
    pub fn changed_chars(&self) -> usize {
        self.components
            .iter()
            .map(|c| match c {
                Component::Retain(_) => 0,
                Component::Delete(n) => *n,
                Component::Insert(s) => char_len(s),
            })
            .sum()
    }

    /// Length in chars of the text this operation applies to.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Length in chars of the text it produces.
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// True if applying it changes nothing (only retains).
    pub fn is_noop(&self) -> bool {
        self.components
            .iter()
            .all(|c| matches!(c, Component::Retain(_)))
    }

    /// Appends: keep `n` chars.
    pub fn retain(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        self.target_len += n;
        if let Some(Component::Retain(m)) = self.components.last_mut() {
            *m += n;
        } else {
            self.components.push(Component::Retain(n));
        }
        self
    }

    /// Appends: insert `text`. An insert right after a delete is placed before it (canonical
    /// order; the effect is the same).
    pub fn insert(&mut self, text: &str) -> &mut Self {
        if text.is_empty() {
            return self;
        }
        self.target_len += char_len(text);
        let n = self.components.len();
        match self.components.as_mut_slice() {
            [.., Component::Insert(s)] => s.push_str(text),
            [.., Component::Insert(s), Component::Delete(_)] => s.push_str(text),
            [.., Component::Delete(_)] => self
                .components
                .insert(n - 1, Component::Insert(text.to_string())),
            _ => self.components.push(Component::Insert(text.to_string())),
        }
        self
    }

    /// Appends: delete `n` chars.
    pub fn delete(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        if let Some(Component::Delete(m)) = self.components.last_mut() {
            *m += n;
        } else {
            self.components.push(Component::Delete(n));
        }
        self
    }

    /// Appends any component, merging as [`Operation::retain`], [`Operation::insert`] and
    /// [`Operation::delete`] do.
    pub fn push(&mut self, c: Component) {
        match c {
            Component::Retain(n) => self.retain(n),
            Component::Insert(s) => self.insert(&s),
            Component::Delete(n) => self.delete(n),
        };
    }

    fn check_base(&self, len: usize) -> Result<(), OpError> {
        if self.base_len == len {
            Ok(())
        } else {
            Err(OpError::BaseLength {
                expected: self.base_len,
                actual: len,
            })
        }
    }

    /// Applies the operation to `rope` in place. On error the rope is untouched.
    pub fn apply_to(&self, rope: &mut Rope) -> Result<(), OpError> {
        self.check_base(rope.len_chars())?;
        let mut pos = 0;
        for c in &self.components {
            match c {
                Component::Retain(n) => pos += n,
                Component::Insert(s) => {
                    rope.insert(pos, s);
                    pos += char_len(s);
                }
                Component::Delete(n) => rope.remove(pos..pos + n),
            }
        }
        Ok(())
    }

    /// The text the operation makes of `rope`.
    pub fn apply(&self, rope: &Rope) -> Result<Rope, OpError> {
        let mut out = rope.clone();
        self.apply_to(&mut out)?;
        Ok(out)
    }

    /// The text the operation makes of `text`.
    pub fn apply_str(&self, text: &str) -> Result<String, OpError> {
        self.check_base(char_len(text))?;
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        for c in &self.components {
            match c {
                Component::Retain(n) => {
                    let (kept, tail) = split_chars(rest, *n);
                    out.push_str(kept);
                    rest = tail;
                }
                Component::Insert(s) => out.push_str(s),
                Component::Delete(n) => rest = split_chars(rest, *n).1,
            }
        }
        Ok(out)
    }

    /// One operation with the effect of `self` then `next`.
    pub fn compose(&self, next: &Operation) -> Result<Operation, OpError> {
        if self.target_len != next.base_len {
            return Err(OpError::Compose {
                first_target: self.target_len,
                second_base: next.base_len,
            });
        }
        let mut out = Operation::new();
        let mut ia = self.components.iter().cloned();
        let mut ib = next.components.iter().cloned();
        let (mut a, mut b) = (ia.next(), ib.next());
        loop {
            match (&a, &b) {
                (None, None) => break,
                // Deletes of the first and inserts of the second touch nothing of the other.
                (Some(Component::Delete(n)), _) => {
                    out.delete(*n);
                    a = ia.next();
                }
                (_, Some(Component::Insert(s))) => {
                    out.insert(s);
                    b = ib.next();
                }
                (Some(ca), Some(cb)) => {
                    let n = len_of(ca).min(len_of(cb));
                    match (ca, cb) {
                        (Component::Retain(_), Component::Retain(_)) => {
                            out.retain(n);
                        }
                        (Component::Insert(s), Component::Retain(_)) => {
                            out.insert(split_chars(s, n).0);
                        }
                        (Component::Retain(_), Component::Delete(_)) => {
                            out.delete(n);
                        }
                        // Inserted, then deleted: nothing remains.
                        (Component::Insert(_), Component::Delete(_)) => {}
                        _ => unreachable!("deletes of a and inserts of b are handled above"),
                    }
                    take(&mut a, n, &mut ia);
                    take(&mut b, n, &mut ib);
                }
                // Unreachable when the lengths match (checked above); kept as an error anyway.
                _ => {
                    return Err(OpError::Compose {
                        first_target: self.target_len,
                        second_base: next.base_len,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Transforms two concurrent operations on the same text: returns `(a', b')` such that
    /// `b'` applies after `a`, `a'` applies after `b`, and both orders give the same text.
    /// `tie` decides whose insert goes first when both insert at the same position.
    pub fn transform(
        a: &Operation,
        b: &Operation,
        tie: Tie,
    ) -> Result<(Operation, Operation), OpError> {
        if a.base_len != b.base_len {
            return Err(OpError::Transform {
                a_base: a.base_len,
                b_base: b.base_len,
            });
        }
        let (mut a2, mut b2) = (Operation::new(), Operation::new());
        let mut ia = a.components.iter().cloned();
        let mut ib = b.components.iter().cloned();
        let (mut ca, mut cb) = (ia.next(), ib.next());
        loop {
            match (&ca, &cb) {
                (None, None) => break,
                (Some(Component::Insert(s)), Some(Component::Insert(_))) if tie == Tie::AFirst => {
                    b2.retain(char_len(s));
                    a2.insert(s);
                    ca = ia.next();
                }
                (Some(Component::Insert(s)), _) if !matches!(cb, Some(Component::Insert(_))) => {
                    b2.retain(char_len(s));
                    a2.insert(s);
                    ca = ia.next();
                }
                (_, Some(Component::Insert(t))) => {
                    a2.retain(char_len(t));
                    b2.insert(t);
                    cb = ib.next();
                }
                (Some(x), Some(y)) => {
                    let n = len_of(x).min(len_of(y));
                    match (x, y) {
                        (Component::Retain(_), Component::Retain(_)) => {
                            a2.retain(n);
                            b2.retain(n);
                        }
                        // Both deleted the same chars: nothing left to do for either.
                        (Component::Delete(_), Component::Delete(_)) => {}
                        (Component::Delete(_), Component::Retain(_)) => {
                            a2.delete(n);
                        }
                        (Component::Retain(_), Component::Delete(_)) => {
                            b2.delete(n);
                        }
                        _ => unreachable!("inserts are handled above"),
                    }
                    take(&mut ca, n, &mut ia);
                    take(&mut cb, n, &mut ib);
                }
                _ => {
                    return Err(OpError::Transform {
                        a_base: a.base_len,
                        b_base: b.base_len,
                    })
                }
            }
        }
        Ok((a2, b2))
    }

    /// The operation that undoes `self`, given the text `self` applies to.
    pub fn invert(&self, base: &Rope) -> Result<Operation, OpError> {
        self.check_base(base.len_chars())?;
        let mut out = Operation::new();
        let mut pos = 0;
        for c in &self.components {
            match c {
                Component::Retain(n) => {
                    out.retain(*n);
                    pos += n;
                }
                Component::Insert(s) => {
                    out.delete(char_len(s));
                }
                Component::Delete(n) => {
                    out.insert(&base.slice(pos..pos + n).to_string());
                    pos += n;
                }
            }
        }
        Ok(out)
    }

    /// The changes as contiguous edits in base coordinates, in order, not overlapping: the
    /// minimal list (one per run of inserts and deletes between retains). Applied one after
    /// the other they need shifting; applied from last to first they do not.
    pub fn edits(&self) -> Vec<Edit> {
        let mut out: Vec<Edit> = Vec::new();
        let mut pos = 0;
        let mut open = false;
        for c in &self.components {
            match c {
                Component::Retain(n) => {
                    pos += n;
                    open = false;
                }
                Component::Insert(s) => {
                    if !open {
                        out.push(Edit::new(pos, pos, ""));
                        open = true;
                    }
                    if let Some(e) = out.last_mut() {
                        e.text.push_str(s);
                    }
                }
                Component::Delete(n) => {
                    if !open {
                        out.push(Edit::new(pos, pos, ""));
                        open = true;
                    }
                    pos += n;
                    if let Some(e) = out.last_mut() {
                        e.end = pos;
                    }
                }
            }
        }
        out
    }

    /// One contiguous edit with the same effect on `base`: from the first change to the last,
    /// unchanged text in between included in the replacement. `None` for a no-op.
    #[cfg(test)]
    fn covering_edit(&self, base: &Rope) -> Result<Option<Edit>, OpError> {
        self.check_base(base.len_chars())?;
        let edits = self.edits();
        let (Some(first), Some(last)) = (edits.first(), edits.last()) else {
            return Ok(None);
        };
        let mut text = String::new();
        let mut pos = first.start;
        for e in &edits {
            text.extend(base.slice(pos..e.start).chunks());
            text.push_str(&e.text);
            pos = e.end;
        }
        Ok(Some(Edit::new(first.start, last.end, text)))
    }

    /// Splits off the first contiguous change: returns `(first, rest)` with
    /// `self == first.compose(rest)` in effect, `first` holding only the first edit of
    /// [`Operation::edits`] and `rest` the others (on the text `first` produces). `None` for a
    /// no-op.
    pub fn split_first_edit(&self) -> Option<(Edit, Operation, Operation)> {
        let edits = self.edits();
        let first = edits.first()?.clone();
        let first_op = Operation::from_edits(self.base_len, std::slice::from_ref(&first)).ok()?;
        let shift = first.inserted_chars() as isize - (first.end - first.start) as isize;
        let rest_edits: Vec<Edit> = edits[1..]
            .iter()
            .map(|e| {
                Edit::new(
                    (e.start as isize + shift) as usize,
                    (e.end as isize + shift) as usize,
                    e.text.clone(),
                )
            })
            .collect();
        let rest = Operation::from_edits(first_op.target_len, &rest_edits).ok()?;
        Some((first, first_op, rest))
    }

    /// The same effect with each replacement trimmed of the text it deletes and re-inserts
    /// unchanged at its start (such replacements come from composing an inverse, or changes
    /// of several peers). Not at its end: the character kept there would stand for a different
    /// one of the new text, and what the user types before it meanwhile would land inside the
    /// new text instead of after it (a peer's word split by someone's keystroke).
    pub fn simplify(&self, base: &Rope) -> Result<Operation, OpError> {
        self.check_base(base.len_chars())?;
        let edits: Vec<Edit> = self
            .edits()
            .into_iter()
            .filter_map(|e| trim_start(base, e))
            .collect();
        Operation::from_edits(self.base_len, &edits)
    }

    /// The minimal single replacement turning `old` into `new`: everything between their
    /// common prefix and common suffix.
    pub fn diff(old: &Rope, new: &Rope) -> Operation {
        let e = trim_edit(old, Edit::new(0, old.len_chars(), new.to_string()));
        let edits: Vec<Edit> = e.into_iter().collect();
        Operation::from_edits(old.len_chars(), &edits).unwrap_or_else(|_| {
            // Unreachable: a trimmed whole-text edit always fits.
            let mut op = Operation::new();
            op.insert(&new.to_string()).delete(old.len_chars());
            op
        })
    }

    /// Like [`Operation::diff`], for texts that differ only in how their line breaks are
    /// written (`\r\n`, `\r`, `\n`) and in a line break at the end: one small edit per
    /// rewritten break, and the text between breaks kept. (A single replacement of the span
    /// between the first and the last rewritten break would delete and re-insert that text:
    /// two bridges adopting the same rewrite at once would then insert it twice; dropping the
    /// same `\r` twice drops it once.) Texts that differ otherwise get [`Operation::diff`].
    pub fn diff_line_breaks(old: &Rope, new: &Rope) -> Operation {
        let (a, b): (Vec<char>, Vec<char>) = (old.chars().collect(), new.chars().collect());
        let mut op = Operation::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let (x, y) = (a.get(i).copied(), b.get(j).copied());
            match (x, y) {
                _ if x == y => {
                    op.retain(1);
                    i += 1;
                    j += 1;
                }
                // `\r\n` written `\n`: drop the `\r`.
                (Some('\r'), Some('\n')) if a.get(i + 1) == Some(&'\n') => {
                    op.delete(1);
                    i += 1;
                }
                // `\n` written `\r\n`: add the `\r`.
                (Some('\n'), Some('\r')) if b.get(j + 1) == Some(&'\n') => {
                    op.insert("\r");
                    j += 1;
                }
                // A lone `\r` written `\n`, or `\r\n`: the `\n` replaces or follows it.
                (Some('\r'), Some('\n')) => {
                    op.insert("\n").delete(1);
                    i += 1;
                    j += 1;
                }
                // A lone `\r` written `\r\n`: add the `\n`.
                (_, Some('\n')) if i > 0 && a[i - 1] == '\r' && j > 0 && b[j - 1] == '\r' => {
                    op.insert("\n");
                    j += 1;
                }
                // A line break added or removed at the end.
                (None, Some('\n' | '\r')) => {
                    op.insert(&b[j].to_string());
                    j += 1;
                }
                (Some('\n' | '\r'), None) => {
                    op.delete(1);
                    i += 1;
                }
                _ => return Operation::diff(old, new),
            }
        }
        op
    }

    /// Builds an operation from components whose retain and delete counts are UTF-16 code
    /// units (what Yjs reports), on the text `base`.
    pub fn from_utf16(
        base: &Rope,
        components: impl IntoIterator<Item = Component>,
    ) -> Result<Operation, OpError> {
        let mut out = Operation::new();
        let (mut cu, mut ch) = (0usize, 0usize);
        let advance = |cu: usize, n: usize| -> Result<usize, OpError> {
            let to = cu + n;
            if to > base.len_utf16_cu() {
                return Err(OpError::Utf16Offset { offset: to });
            }
            let c = base.utf16_cu_to_char(to);
            if base.char_to_utf16_cu(c) != to {
                return Err(OpError::Utf16Offset { offset: to });
            }
            Ok(c)
        };
        for c in components {
            match c {
                Component::Retain(n) => {
                    let to = advance(cu, n)?;
                    out.retain(to - ch);
                    (cu, ch) = (cu + n, to);
                }
                Component::Delete(n) => {
                    let to = advance(cu, n)?;
                    out.delete(to - ch);
                    (cu, ch) = (cu + n, to);
                }
                Component::Insert(s) => {
                    out.insert(&s);
                }
            }
        }
        out.retain(base.len_chars() - ch);
        Ok(out)
    }

    /// The components with retain and delete counts in UTF-16 code units, given the text the
    /// operation applies to (for Yjs' `applyDelta`). Trailing retains are dropped.
    pub fn to_utf16(&self, base: &Rope) -> Result<Vec<Component>, OpError> {
        self.check_base(base.len_chars())?;
        let mut out = Vec::new();
        let mut pos = 0;
        for c in &self.components {
            match c {
                Component::Retain(n) => {
                    out.push(Component::Retain(
                        base.char_to_utf16_cu(pos + n) - base.char_to_utf16_cu(pos),
                    ));
                    pos += n;
                }
                Component::Delete(n) => {
                    out.push(Component::Delete(
                        base.char_to_utf16_cu(pos + n) - base.char_to_utf16_cu(pos),
                    ));
                    pos += n;
                }
                Component::Insert(s) => out.push(Component::Insert(s.clone())),
            }
        }
        if let Some(Component::Retain(_)) = out.last() {
            out.pop();
        }
        Ok(out)
    }
}

/// How long a line diff may take before it settles for a coarser answer (still correct).
const LINE_DIFF_DEADLINE: Duration = Duration::from_millis(50);

/// An edit spanning lines, as the edits that change only the lines that differ (see
/// [`Operation::replace_trimmed`]), in order.
fn line_edits(base: &Rope, e: Edit) -> Vec<Edit> {
    // Whole lines on both sides: from the start of the first line to the end of the last.
    let mut a = e.start;
    while a > 0 && base.char(a - 1) != '\n' {
        a -= 1;
    }
    let mut b = e.end;
    if b > 0 && base.char(b - 1) != '\n' {
        while b < base.len_chars() && base.char(b) != '\n' {
            b += 1;
        }
        b = (b + 1).min(base.len_chars());
    }
    let old = base.slice(a..b).to_string();
    let new = format!(
        "{}{}{}",
        base.slice(a..e.start),
        e.text,
        base.slice(e.end..b)
    );
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();
    let mut at = vec![a];
    for line in &old_lines {
        at.push(at[at.len() - 1] + char_len(line));
    }
    let deadline = Instant::now() + LINE_DIFF_DEADLINE;
    let ops = similar::capture_diff_slices_deadline(
        similar::Algorithm::Myers,
        &old_lines,
        &new_lines,
        Some(deadline),
    );
    // The ops come in order; their old indexes do not always say where an insertion goes, so
    // the position in the old lines is counted here.
    let mut edits = Vec::new();
    let mut line = 0;
    for op in ops {
        let (old_len, new) = (op.old_range().len(), op.new_range());
        let old = line..line + old_len;
        line += old_len;
        if matches!(op, similar::DiffOp::Equal { .. }) {
            continue;
        }
        if old.len() == new.len() {
            // Lines replaced one for one: each keeps what it can.
            for (o, n) in old.zip(new) {
                edits.extend(trim_edit(base, Edit::new(at[o], at[o + 1], new_lines[n])));
            }
        } else {
            let block = Edit::new(at[old.start], at[old.end], new_lines[new].concat());
            edits.extend(trim_edit(base, block));
        }
    }
    edits
}

/// A whole-line insertion or deletion in the form a line diff may report it: shifted right by
/// what the line has in common with the next one (`:move` of `«a»` above `«b»` reported as
/// inserting `a»\n«` after the first `«`). The text is the same either way, but in the CRDT
/// the shifted form gives the moved line a character of its neighbour. Pure insertions and
/// deletions are moved back to start at a line start when that gives the same text and whole
/// lines; anything else is left as it is.
fn align_to_lines(base: &Rope, e: Edit) -> Edit {
    let pure_insert = e.start == e.end;
    let changed: Vec<char> = if pure_insert {
        e.text.chars().collect()
    } else if e.text.is_empty() {
        base.slice(e.start..e.end).chars().collect()
    } else {
        return e;
    };
    if changed.last() == Some(&'\n') || !changed.contains(&'\n') {
        return e;
    }
    // Shift left while the character before the edit equals the changed text's last one.
    // (A shift by the whole text would give the same edit: stop one short of it.)
    let mut k = 0;
    while k + 1 < changed.len()
        && k < e.start
        && base.char(e.start - k - 1) == changed[changed.len() - 1 - k]
    {
        k += 1;
        let at = e.start - k;
        let rotated_ends_in_newline = changed[changed.len() - 1 - k] == '\n';
        if (at == 0 || base.char(at - 1) == '\n') && rotated_ends_in_newline {
            let text: String = changed[changed.len() - k..]
                .iter()
                .chain(&changed[..changed.len() - k])
                .collect();
            return if pure_insert {
                Edit::new(at, at, text)
            } else {
                Edit::new(at, e.end - k, String::new())
            };
        }
    }
    e
}

/// Like [`trim_edit`], at the start only.
fn trim_start(base: &Rope, e: Edit) -> Option<Edit> {
    let new: Vec<char> = e.text.chars().collect();
    let prefix = base
        .slice(e.start..e.end)
        .chars()
        .zip(new.iter())
        .take_while(|(a, b)| a == *b)
        .count();
    let (start, text): (usize, String) = (e.start + prefix, new[prefix..].iter().collect());
    (start != e.end || !text.is_empty()).then(|| Edit::new(start, e.end, text))
}

/// Trims from an edit on `base` the chars its replacement keeps unchanged at either end;
/// `None` if nothing is left.
fn trim_edit(base: &Rope, e: Edit) -> Option<Edit> {
    let old = base.slice(e.start..e.end);
    let new: Vec<char> = e.text.chars().collect();
    let prefix = old
        .chars()
        .zip(new.iter())
        .take_while(|(a, b)| a == *b)
        .count();
    let max_suffix = (old.len_chars() - prefix).min(new.len() - prefix);
    let suffix = old
        .chars_at(old.len_chars())
        .reversed()
        .zip(new.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == *b)
        .count();
    let start = e.start + prefix;
    let end = e.end - suffix;
    let text: String = new[prefix..new.len() - suffix].iter().collect();
    (start != end || !text.is_empty()).then(|| Edit::new(start, end, text))
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match c {
                Component::Retain(n) => write!(f, "r{n}")?,
                Component::Insert(s) => write!(f, "i{s:?}")?,
                Component::Delete(n) => write!(f, "d{n}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny deterministic PRNG (xorshift64*), so random tests need no extra crate and a
    /// failing case can be replayed from its seed.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in `0..n` (`n > 0`).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
        pub(crate) fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        /// A short string mixing ASCII, 2-, 3- and 4-byte chars, combining marks and breaks.
        pub(crate) fn text(&mut self, max: usize) -> String {
            const ALPHABET: &[char] = &[
                'a', 'b', 'c', 'x', ' ', 'é', '世', '🎉', '\u{301}', '\n', '\r', 'ß', '😀',
            ];
            let n = 1 + self.below(max);
            (0..n)
                .map(|_| ALPHABET[self.below(ALPHABET.len())])
                .collect()
        }
    }

    /// A random operation on a text of `len` chars.
    pub(crate) fn random_op(rng: &mut Rng, len: usize) -> Operation {
        let mut op = Operation::new();
        let mut left = len;
        while left > 0 || rng.chance(20) {
            match rng.below(4) {
                0 | 1 if left > 0 => {
                    let n = 1 + rng.below(left.min(5));
                    op.retain(n);
                    left -= n;
                }
                2 if left > 0 => {
                    let n = 1 + rng.below(left.min(3));
                    op.delete(n);
                    left -= n;
                }
                _ => {
                    op.insert(&rng.text(4));
                }
            }
            if left == 0 && rng.chance(70) {
                break;
            }
        }
        op
    }

    fn op(parts: &[Component]) -> Operation {
        let mut o = Operation::new();
        for p in parts {
            o.push(p.clone());
        }
        o
    }

    use Component::{Delete as D, Insert as I, Retain as R};

    fn ins(s: &str) -> Component {
        I(s.to_string())
    }

    #[test]
    fn builder_is_canonical() {
        let o = op(&[R(1), R(2), ins("a"), ins("b"), D(1), D(2), R(0), ins("")]);
        assert_eq!(o.components(), &[R(3), ins("ab"), D(3)]);
        // An insert after a delete moves before it.
        let o = op(&[R(1), D(2), ins("x")]);
        assert_eq!(o.components(), &[R(1), ins("x"), D(2)]);
        let o = op(&[ins("a"), D(2), ins("b")]);
        assert_eq!(o.components(), &[ins("ab"), D(2)]);
        assert_eq!((o.base_len(), o.target_len()), (2, 2));
        assert!(Operation::identity(5).is_noop());
        assert!(Operation::identity(0).components().is_empty());
    }

    #[test]
    fn apply_counts_chars_not_bytes() {
        let o = op(&[R(1), D(1), ins("🎉"), R(1)]);
        assert_eq!(o.apply_str("a世b").unwrap(), "a🎉b");
        let r = o.apply(&Rope::from_str("a世b")).unwrap();
        assert_eq!(r.to_string(), "a🎉b");
    }

    #[test]
    fn apply_rejects_wrong_length_without_touching_the_text() {
        let o = op(&[R(2), D(1)]);
        let mut r = Rope::from_str("ab");
        assert_eq!(
            o.apply_to(&mut r),
            Err(OpError::BaseLength {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(r.to_string(), "ab");
        assert!(o.apply_str("abcd").is_err());
    }

    #[test]
    fn compose_and_transform_reject_mismatched_lengths() {
        let a = Operation::identity(3);
        let b = Operation::identity(4);
        assert!(matches!(a.compose(&b), Err(OpError::Compose { .. })));
        assert!(matches!(
            Operation::transform(&a, &b, Tie::AFirst),
            Err(OpError::Transform { .. })
        ));
    }

    #[test]
    fn tie_decides_which_insert_goes_first() {
        let a = Operation::replace(2, 1, 1, "A").unwrap();
        let b = Operation::replace(2, 1, 1, "B").unwrap();
        let (a2, b2) = Operation::transform(&a, &b, Tie::AFirst).unwrap();
        assert_eq!(b2.apply_str(&a.apply_str("xy").unwrap()).unwrap(), "xABy");
        assert_eq!(a2.apply_str(&b.apply_str("xy").unwrap()).unwrap(), "xABy");
        let (a2, b2) = Operation::transform(&a, &b, Tie::BFirst).unwrap();
        assert_eq!(b2.apply_str(&a.apply_str("xy").unwrap()).unwrap(), "xBAy");
        assert_eq!(a2.apply_str(&b.apply_str("xy").unwrap()).unwrap(), "xBAy");
    }

    #[test]
    fn concurrent_insert_inside_a_deleted_range_survives() {
        let a = Operation::replace(6, 1, 5, "").unwrap(); // delete "bcde"
        let b = Operation::replace(6, 3, 3, "XY").unwrap(); // insert inside it
        let (a2, b2) = Operation::transform(&a, &b, Tie::AFirst).unwrap();
        let s1 = b2.apply_str(&a.apply_str("abcdef").unwrap()).unwrap();
        let s2 = a2.apply_str(&b.apply_str("abcdef").unwrap()).unwrap();
        assert_eq!(s1, "aXYf");
        assert_eq!(s1, s2);
    }

    #[test]
    fn transform_satisfies_tp1_on_random_cases() {
        for seed in 0..4000u64 {
            let mut rng = Rng::new(seed);
            let base = rng.text(12);
            let n = base.chars().count();
            let a = random_op(&mut rng, n);
            let b = random_op(&mut rng, n);
            let tie = if rng.chance(50) {
                Tie::AFirst
            } else {
                Tie::BFirst
            };
            let (a2, b2) =
                Operation::transform(&a, &b, tie).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let left = b2.apply_str(&a.apply_str(&base).unwrap()).unwrap();
            let right = a2.apply_str(&b.apply_str(&base).unwrap()).unwrap();
            assert_eq!(
                left, right,
                "TP1 failed for seed {seed}: base {base:?} a {a} b {b}"
            );
            // Also through ropes.
            let rope = b2.apply(&a.apply(&Rope::from_str(&base)).unwrap()).unwrap();
            assert_eq!(rope.to_string(), left, "seed {seed}");
        }
    }

    #[test]
    fn compose_equals_sequential_application_and_is_associative() {
        for seed in 0..3000u64 {
            let mut rng = Rng::new(seed);
            let s0 = rng.text(12);
            let a = random_op(&mut rng, s0.chars().count());
            let s1 = a.apply_str(&s0).unwrap();
            let b = random_op(&mut rng, s1.chars().count());
            let s2 = b.apply_str(&s1).unwrap();
            let c = random_op(&mut rng, s2.chars().count());
            let s3 = c.apply_str(&s2).unwrap();
            let ab = a.compose(&b).unwrap();
            assert_eq!(ab.apply_str(&s0).unwrap(), s2, "seed {seed}: a {a} b {b}");
            let left = ab.compose(&c).unwrap();
            let right = a.compose(&b.compose(&c).unwrap()).unwrap();
            assert_eq!(left.apply_str(&s0).unwrap(), s3, "seed {seed}");
            assert_eq!(right.apply_str(&s0).unwrap(), s3, "seed {seed}");
            assert_eq!(left, right, "seed {seed}: composition is canonical");
        }
    }

    #[test]
    fn invert_undoes() {
        for seed in 0..1000u64 {
            let mut rng = Rng::new(seed);
            let s0 = Rope::from_str(&rng.text(12));
            let a = random_op(&mut rng, s0.len_chars());
            let s1 = a.apply(&s0).unwrap();
            let inv = a.invert(&s0).unwrap();
            assert_eq!(inv.apply(&s1).unwrap(), s0, "seed {seed}");
            assert!(a.compose(&inv).unwrap().simplify(&s0).unwrap().is_noop());
        }
    }

    #[test]
    fn edits_round_trip_and_covering_edit_has_the_same_effect() {
        for seed in 0..1000u64 {
            let mut rng = Rng::new(seed);
            let s0 = Rope::from_str(&rng.text(15));
            let a = random_op(&mut rng, s0.len_chars());
            let want = a.apply(&s0).unwrap();
            let edits = a.edits();
            assert_eq!(Operation::from_edits(a.base_len(), &edits).unwrap(), a);
            // Applied last to first, base coordinates need no shifting.
            let mut r = s0.clone();
            for e in edits.iter().rev() {
                r.remove(e.start..e.end);
                r.insert(e.start, &e.text);
            }
            assert_eq!(r, want, "seed {seed}");
            match a.covering_edit(&s0).unwrap() {
                None => assert!(a.is_noop()),
                Some(e) => {
                    let one = Operation::replace(s0.len_chars(), e.start, e.end, &e.text).unwrap();
                    assert_eq!(one.apply(&s0).unwrap(), want, "seed {seed}");
                    assert_eq!(e.start, edits[0].start);
                    assert_eq!(e.end, edits.last().unwrap().end);
                }
            }
            if let Some((first, first_op, rest)) = a.split_first_edit() {
                assert_eq!(first, edits[0]);
                assert_eq!(rest.edits().len(), edits.len() - 1);
                let mid = first_op.apply(&s0).unwrap();
                assert_eq!(rest.apply(&mid).unwrap(), want, "seed {seed}");
            } else {
                assert!(a.is_noop());
            }
        }
    }

    #[test]
    fn from_edits_rejects_overlap_and_out_of_range() {
        assert!(Operation::from_edits(5, &[Edit::new(2, 6, "")]).is_err());
        assert!(Operation::from_edits(5, &[Edit::new(3, 2, "")]).is_err());
        assert!(Operation::from_edits(5, &[Edit::new(1, 3, "x"), Edit::new(2, 4, "y")]).is_err());
        assert!(Operation::from_edits(5, &[Edit::new(1, 3, "x"), Edit::new(3, 4, "y")]).is_ok());
    }

    #[test]
    fn simplify_trims_unchanged_starts() {
        let base = Rope::from_str("hello world");
        let o = Operation::replace(11, 0, 11, "hello there world").unwrap();
        assert_eq!(
            o.simplify(&base).unwrap().edits(),
            vec![Edit::new(6, 11, "there world")]
        );
        let same = Operation::replace(11, 2, 5, "llo").unwrap();
        assert!(same.simplify(&base).unwrap().is_noop());
    }

    #[test]
    fn line_break_rewrites_are_small_edits() {
        let cases = [
            ("a\r\nb\r\nc", "a\nb\nc", 2),
            ("a\nb\nc", "a\r\nb\r\nc", 2),
            ("a\rb", "a\nb", 1),
            ("a\rb", "a\r\nb", 1),
            ("x 🎉\r\nwindows 世\r\n", "x 🎉\nwindows 世\n", 2),
            ("text\n", "text\n\n", 1),
            ("text\n", "text", 1),
            ("abc\r\n", "abd\n", 1),
        ];
        for (old, new, edits) in cases {
            let (o, n) = (Rope::from_str(old), Rope::from_str(new));
            let d = Operation::diff_line_breaks(&o, &n);
            assert_eq!(d.apply(&o).unwrap(), n, "{old:?} -> {new:?}");
            assert_eq!(d.edits().len(), edits, "{old:?} -> {new:?}: {d:?}");
            // Nothing but line breaks is deleted (except where the texts differ otherwise).
            if !old.starts_with("abc") {
                let deleted: String = d
                    .edits()
                    .iter()
                    .flat_map(|e| o.slice(e.start..e.end).chars().collect::<Vec<_>>())
                    .collect();
                assert!(
                    deleted.chars().all(|c| c == '\r' || c == '\n'),
                    "{deleted:?}"
                );
            }
        }
    }

    #[test]
    fn whole_lines_reported_shifted_are_aligned_again() {
        let base = Rope::from_str("«a» one\n«b» two\nend\n");
        // `:move` of a new line above `«b» two`, as a line diff reports it: after its `«`.
        let op = Operation::replace_trimmed(&base, 9, 9, "m» new\n«").unwrap();
        assert_eq!(op.apply(&base).unwrap(), "«a» one\n«m» new\n«b» two\nend\n");
        assert_eq!(op.edits(), vec![Edit::new(8, 8, "«m» new\n")]);
        // Deleting the line `«a» one` reported as from its second character on.
        let op = Operation::replace_trimmed(&base, 1, 9, "").unwrap();
        assert_eq!(op.apply(&base).unwrap(), "«b» two\nend\n");
        assert_eq!(op.edits(), vec![Edit::new(0, 8, "")]);
        // Not whole lines, or already at a line start: as reported.
        let op = Operation::replace_trimmed(&base, 2, 2, "x»y«").unwrap();
        assert_eq!(op.edits(), vec![Edit::new(2, 2, "x»y«")]);
        let op = Operation::replace_trimmed(&base, 8, 8, "new\n").unwrap();
        assert_eq!(op.edits(), vec![Edit::new(8, 8, "new\n")]);
        // Text that repeats what precedes it: the same text, whichever place is chosen.
        let base = Rope::from_str("x\nab\nab");
        let op = Operation::replace_trimmed(&base, 7, 7, "\nab").unwrap();
        assert_eq!(op.apply(&base).unwrap(), "x\nab\nab\nab");
        let base = Rope::from_str("a\na");
        let op = Operation::replace_trimmed(&base, 1, 1, "\na").unwrap();
        assert_eq!(op.apply(&base).unwrap(), "a\na\na");
    }

    /// Whatever is trimmed or re-aligned, the result is the text the change makes.
    #[test]
    fn trimmed_and_aligned_changes_make_the_same_text() {
        let mut rng = Rng::new(11);
        let pieces = ["a", "\n", "«", "b"];
        for _ in 0..20_000 {
            let text: String = (0..rng.below(8)).map(|_| pieces[rng.below(4)]).collect();
            let base = Rope::from_str(&text);
            let len = base.len_chars();
            let start = rng.below(len + 1);
            let end = start + rng.below(len - start + 1);
            let new: String = (0..rng.below(5)).map(|_| pieces[rng.below(4)]).collect();
            let op = Operation::replace_trimmed(&base, start, end, &new).unwrap();
            let mut expected = base.clone();
            expected.remove(start..end);
            expected.insert(start, &new);
            assert_eq!(
                op.apply(&base).unwrap(),
                expected,
                "{text:?} [{start}, {end}) {new:?}"
            );
        }
    }

    #[test]
    fn wide_changes_are_reduced_to_the_lines_and_chars_that_differ() {
        // `:%s` changing lines 2 and 999 of 1,000, reported as one change from line 2 to 999.
        let lines: Vec<String> = (1..=1000).map(|i| format!("line {i} = {i}\n")).collect();
        let base = Rope::from_str(&lines.concat());
        let mut changed = lines.clone();
        changed[1] = "line two = 2\n".into();
        changed[998] = "line 999 = nine\n".into();
        let (start, end) = (base.line_to_char(1), base.line_to_char(999));
        let text = changed[1..999].concat();
        let op = Operation::replace_trimmed(&base, start, end, &text).unwrap();
        assert_eq!(op.apply(&base).unwrap().to_string(), changed.concat());
        assert_eq!(op.edits().len(), 2, "{op}");
        assert_eq!(op.changed_chars(), "2two999nine".len(), "{op}");
        // A formatter's whole-buffer rewrite (a full-document change): lines inserted,
        // deleted and changed, the rest kept.
        let old = Rope::from_str("a\nb\nc\nd\ne\n");
        let new = "a\nB\nc\nx\ny\ne\n";
        let op = Operation::replace_trimmed(&old, 0, old.len_chars(), new).unwrap();
        assert_eq!(op.apply(&old).unwrap().to_string(), new);
        assert_eq!(
            op.edits(),
            vec![Edit::new(2, 3, "B"), Edit::new(6, 7, "x\ny")],
            "{op}"
        );
    }

    #[test]
    fn replacements_leave_out_what_stays() {
        let base = Rope::from_str("ab«x»cd\nrest");
        // Neovim-style: the whole line replaced by itself plus an insertion in the middle.
        let op = Operation::replace_trimmed(&base, 0, 7, "ab«x»NEW\ncd").unwrap();
        assert_eq!(op.apply(&base).unwrap(), "ab«x»NEW\ncd\nrest");
        assert_eq!(op.edits(), vec![Edit::new(5, 5, "NEW\n")]);
        assert!(Operation::replace_trimmed(&base, 1, 3, "b«")
            .unwrap()
            .is_noop());
        assert!(Operation::replace_trimmed(&base, 3, 99, "").is_err());
    }

    #[test]
    fn diff_is_minimal_and_correct() {
        let cases = [
            ("", ""),
            ("", "abc"),
            ("abc", ""),
            ("abc", "abc"),
            ("aaa", "aaaa"),
            ("héllo 🎉", "héllo 🎉🎉!"),
            ("x世y", "xy"),
            ("a\r\nb", "a\nb"),
        ];
        for (old, new) in cases {
            let (o, n) = (Rope::from_str(old), Rope::from_str(new));
            let d = Operation::diff(&o, &n);
            assert_eq!(d.apply(&o).unwrap(), n, "{old:?} -> {new:?}");
            assert!(d.edits().len() <= 1);
        }
        let d = Operation::diff(&Rope::from_str("abcdef"), &Rope::from_str("abXdef"));
        assert_eq!(d.edits(), vec![Edit::new(2, 3, "X")]);
    }

    #[test]
    fn utf16_components_convert_both_ways() {
        let base = Rope::from_str("a🎉b世c");
        // Retain "a🎉" (3 units), delete "b" (1), insert, retain the rest.
        let o = Operation::from_utf16(&base, [R(3), D(1), ins("é")]).unwrap();
        assert_eq!(o.apply(&base).unwrap().to_string(), "a🎉é世c");
        assert_eq!(o.to_utf16(&base).unwrap(), vec![R(3), ins("é"), D(1)]);
        // Splitting the surrogate pair is an error, not a panic.
        assert!(Operation::from_utf16(&base, [R(2), D(1)]).is_err());
        assert!(Operation::from_utf16(&base, [R(99)]).is_err());
        for seed in 0..500 {
            let mut rng = Rng::new(seed);
            let base = Rope::from_str(&rng.text(12));
            let a = random_op(&mut rng, base.len_chars());
            let u = a.to_utf16(&base).unwrap();
            assert_eq!(Operation::from_utf16(&base, u).unwrap(), a, "seed {seed}");
        }
    }
}
