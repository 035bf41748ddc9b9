//! Position encodings: the one place where LSP positions meet the bridge's char indices.
//!
//! Inside the bridge every offset is a *char index*: a count of Unicode scalar values, which
//! is what `ropey` indexes by and what [`crate::ot`] counts. Three other units exist at the
//! edges, and this module converts between them and char indices exactly:
//!
//! - LSP positions: `line` plus `character`, where `character` counts UTF-8 bytes, UTF-16
//!   code units or UTF-32 code units (= chars) depending on the negotiated
//!   [`PositionEncoding`] (LSP 3.17 `positionEncoding`; UTF-16 when the client offers nothing);
//! - UTF-16 code unit offsets, which the CRDT (Yjs / `yrs` with `OffsetKind::Utf16`) counts.
//!
//! Lines are LSP lines: they end at `\n`, `\r\n` or a lone `\r` and at nothing else. Ropey
//! (with its default `unicode_lines` feature) also breaks lines at VT, FF, NEL, U+2028 and
//! U+2029; LSP clients do not, so ropey's line index is only used when it provably agrees with
//! LSP for the text at hand (see [`line_index_mode`]), and a byte scan is used otherwise.
//!
//! Limits:
//! - Nothing here panics, whatever the input: out-of-range positions are clamped and the
//!   clamping is reported as [`Clamped::Yes`], so the caller can log it or resync.
//! - A position inside a multi-unit character (the middle of a UTF-8 sequence or of a UTF-16
//!   surrogate pair) resolves to the start of that character; the reverse conversions never
//!   produce such a position.
//! - The gap between the `\r` and the `\n` of a CRLF pair has no LSP position. A char index
//!   there converts to the end of its line (reported as clamped); callers that send edits
//!   must not put an edit boundary there (the shadow widens such edits).
//! - With ropey's default features, every line lookup first scans the text's bytes for the
//!   five non-LSP line breaks (O(n), a fast byte loop). Building ropey with
//!   `default-features = false, features = ["cr_lines", "simd"]` makes its line index match
//!   LSP exactly; this module detects that at run time and then answers in O(log n).

use std::ops::Range as CharRange;
use std::sync::OnceLock;

use ropey::Rope;
use tower_lsp::lsp_types::{ClientCapabilities, Position, PositionEncodingKind, Range};

/// The unit of `Position::character`, negotiated once per client at `initialize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PositionEncoding {
    /// UTF-8 code units (bytes).
    Utf8,
    /// UTF-16 code units: the LSP default, and the only one VS Code speaks.
    Utf16,
    /// UTF-32 code units, i.e. chars: no conversion needed inside a line.
    Utf32,
}

impl PositionEncoding {
    /// Picks the encoding from the client's `general.positionEncodings`, in the client's
    /// capabilities. See [`PositionEncoding::negotiate_offered`].
    pub fn negotiate(capabilities: &ClientCapabilities) -> Self {
        Self::negotiate_offered(
            capabilities
                .general
                .as_ref()
                .and_then(|general| general.position_encodings.as_deref()),
        )
    }

    /// Picks the encoding from what the client offers: UTF-32 if offered (chars are what the
    /// bridge counts, so no conversion inside a line), else UTF-8 (cheap with a rope), else
    /// UTF-16, which every client must support and which LSP assumes when nothing is offered.
    /// Unknown encodings in the list are ignored.
    pub fn negotiate_offered(offered: Option<&[PositionEncodingKind]>) -> Self {
        let offered = offered.unwrap_or(&[]);
        let offers = |kind: &PositionEncodingKind| offered.iter().any(|o| o == kind);
        if offers(&PositionEncodingKind::UTF32) {
            PositionEncoding::Utf32
        } else if offers(&PositionEncodingKind::UTF8) {
            PositionEncoding::Utf8
        } else {
            PositionEncoding::Utf16
        }
    }

    /// The encoding a `PositionEncodingKind` names, if it is one of the three LSP defines.
    pub fn from_kind(kind: &PositionEncodingKind) -> Option<Self> {
        match kind.as_str() {
            "utf-8" => Some(PositionEncoding::Utf8),
            "utf-16" => Some(PositionEncoding::Utf16),
            "utf-32" => Some(PositionEncoding::Utf32),
            _ => None,
        }
    }

    /// The value to answer in `ServerCapabilities::position_encoding`.
    pub fn kind(self) -> PositionEncodingKind {
        match self {
            PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
            PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
            PositionEncoding::Utf32 => PositionEncodingKind::UTF32,
        }
    }
}

impl From<PositionEncoding> for PositionEncodingKind {
    fn from(encoding: PositionEncoding) -> Self {
        encoding.kind()
    }
}

impl TryFrom<&PositionEncodingKind> for PositionEncoding {
    type Error = ();

    fn try_from(kind: &PositionEncodingKind) -> Result<Self, ()> {
        PositionEncoding::from_kind(kind).ok_or(())
    }
}

/// Whether a conversion had to move its input to make sense of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clamped {
    /// The input was exact.
    #[default]
    No,
    /// The input was past the end of its line or document, inside a multi-unit character, or
    /// (for ranges) reversed; the result is the nearest valid value.
    Yes,
}

impl Clamped {
    pub fn is_yes(self) -> bool {
        self == Clamped::Yes
    }

    fn from_bool(clamped: bool) -> Self {
        if clamped {
            Clamped::Yes
        } else {
            Clamped::No
        }
    }
}

impl std::ops::BitOr for Clamped {
    type Output = Clamped;
    fn bitor(self, rhs: Clamped) -> Clamped {
        Clamped::from_bool(self.is_yes() || rhs.is_yes())
    }
}

impl std::ops::BitOrAssign for Clamped {
    fn bitor_assign(&mut self, rhs: Clamped) {
        *self = *self | rhs;
    }
}

// ---------------------------------------------------------------------------------------------
// LSP lines
// ---------------------------------------------------------------------------------------------

/// How ropey, as compiled into this binary, breaks lines (cargo features are unified across
/// the build, so this is decided at run time rather than assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineIndexMode {
    /// Exactly LSP's `\n`, `\r\n`, `\r`: ropey's line index is used as is.
    Lsp,
    /// LSP's breaks plus VT, FF, NEL, U+2028, U+2029 (`unicode_lines`, ropey's default):
    /// ropey's index is used for texts that contain none of the extra five.
    Unicode,
    /// Something else (e.g. no lone `\r`): every lookup scans.
    Other,
}

/// The line-break behaviour of the ropey this binary was built with.
fn line_index_mode() -> LineIndexMode {
    static MODE: OnceLock<LineIndexMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let lsp_breaks_ok = Rope::from_str("a\rb\r\nc\nd").len_lines() == 4;
        let extras = Rope::from_str("\u{0B}\u{0C}\u{85}\u{2028}\u{2029}").len_lines();
        match (lsp_breaks_ok, extras) {
            (true, 1) => LineIndexMode::Lsp,
            (true, 6) => LineIndexMode::Unicode,
            _ => LineIndexMode::Other,
        }
    })
}

/// True if the text contains a line break that ropey's `unicode_lines` counts and LSP does
/// not: VT (0B), FF (0C), NEL (C2 85), LS (E2 80 A8), PS (E2 80 A9).
fn has_non_lsp_breaks(rope: &Rope) -> bool {
    rope.chunks().any(|chunk| {
        let bytes = chunk.as_bytes();
        // Cheap prefilter the compiler can vectorise; most chunks stop here.
        if !bytes
            .iter()
            .any(|&b| matches!(b, 0x0B | 0x0C | 0x85 | 0xA8 | 0xA9))
        {
            return false;
        }
        // Ropey never splits a char across chunks, so a sequence is whole within the chunk.
        bytes.iter().enumerate().any(|(i, &b)| match b {
            0x0B | 0x0C => true,
            0x85 => i >= 1 && bytes[i - 1] == 0xC2,
            0xA8 | 0xA9 => i >= 2 && bytes[i - 1] == 0x80 && bytes[i - 2] == 0xE2,
            _ => false,
        })
    })
}

/// Whether ropey's own line index equals LSP's for this text.
fn ropey_lines_are_lsp_lines(rope: &Rope) -> bool {
    match line_index_mode() {
        LineIndexMode::Lsp => true,
        LineIndexMode::Unicode => !has_non_lsp_breaks(rope),
        LineIndexMode::Other => false,
    }
}

/// Calls `f` with the byte offset just past each LSP line break, in order, until it returns
/// false. A CRLF pair is one break; a chunk boundary between `\r` and `\n` is handled.
fn for_each_line_start(rope: &Rope, mut f: impl FnMut(usize) -> bool) {
    let mut offset = 0usize;
    let mut prev_cr = false;
    for chunk in rope.chunks() {
        for (i, &b) in chunk.as_bytes().iter().enumerate() {
            let at = offset + i;
            if prev_cr {
                prev_cr = false;
                if b == b'\n' {
                    if !f(at + 1) {
                        return;
                    }
                    continue;
                }
                // A lone CR: its line ended where this byte starts.
                if !f(at) {
                    return;
                }
            }
            if b == b'\r' {
                prev_cr = true;
            } else if b == b'\n' && !f(at + 1) {
                return;
            }
        }
        offset += chunk.len();
    }
    if prev_cr {
        f(offset);
    }
}

/// Number of LSP lines: line breaks + 1 (an empty document has one empty line).
pub fn line_count(rope: &Rope) -> usize {
    if ropey_lines_are_lsp_lines(rope) {
        return rope.len_lines();
    }
    let mut breaks = 0;
    for_each_line_start(rope, |_| {
        breaks += 1;
        true
    });
    breaks + 1
}

/// Char index of the first char of LSP line `line`, or `None` past the last line.
pub fn line_to_char(rope: &Rope, line: usize) -> Option<usize> {
    if line == 0 {
        return Some(0);
    }
    if ropey_lines_are_lsp_lines(rope) {
        return (line < rope.len_lines()).then(|| rope.line_to_char(line));
    }
    let mut seen = 0;
    let mut found = None;
    for_each_line_start(rope, |byte| {
        seen += 1;
        if seen == line {
            found = Some(rope.byte_to_char(byte));
            false
        } else {
            true
        }
    });
    found
}

/// The LSP line holding char index `char_idx` (clamped to the document) and the char index
/// where that line starts. A char between `\r` and `\n` belongs to the line the pair ends.
pub fn char_to_line(rope: &Rope, char_idx: usize) -> (usize, usize) {
    let char_idx = char_idx.min(rope.len_chars());
    if ropey_lines_are_lsp_lines(rope) {
        let line = rope.char_to_line(char_idx);
        return (line, rope.line_to_char(line));
    }
    let target = rope.char_to_byte(char_idx);
    let mut line = 0;
    let mut start = 0;
    for_each_line_start(rope, |byte| {
        if byte <= target {
            line += 1;
            start = byte;
            true
        } else {
            false
        }
    });
    (line, rope.byte_to_char(start))
}

/// Char index just past the last char of the line starting at `line_start`, before its line
/// break (or the end of the document).
fn line_content_end(rope: &Rope, line_start: usize) -> usize {
    // Walks the line's chars: needed anyway to bound `character`, and a line is short next to
    // a document. (Ropey's own line end would be wrong under `unicode_lines`.)
    let mut end = line_start;
    for c in rope.chars_at(line_start) {
        if c == '\n' || c == '\r' {
            break;
        }
        end += 1;
    }
    end
}

/// True if `char_idx` sits between the `\r` and the `\n` of a CRLF pair: no LSP position
/// addresses that gap.
pub fn is_inside_crlf(rope: &Rope, char_idx: usize) -> bool {
    char_idx > 0
        && char_idx < rope.len_chars()
        && rope.char(char_idx - 1) == '\r'
        && rope.char(char_idx) == '\n'
}

// ---------------------------------------------------------------------------------------------
// Position <-> char index
// ---------------------------------------------------------------------------------------------

/// Units of `encoding` from char index `from` to char index `to` (`from <= to`).
fn units_between(rope: &Rope, from: usize, to: usize, encoding: PositionEncoding) -> usize {
    match encoding {
        PositionEncoding::Utf32 => to - from,
        PositionEncoding::Utf16 => rope.char_to_utf16_cu(to) - rope.char_to_utf16_cu(from),
        PositionEncoding::Utf8 => rope.char_to_byte(to) - rope.char_to_byte(from),
    }
}

/// The char index an LSP position names.
///
/// Clamps (and says so): a line past the last → end of document; a character past the end
/// of its line → end of that line, before its line break; a character inside a multi-unit
/// character → the start of that character.
pub fn position_to_char(
    rope: &Rope,
    pos: Position,
    encoding: PositionEncoding,
) -> (usize, Clamped) {
    let Some(start) = line_to_char(rope, pos.line as usize) else {
        return (rope.len_chars(), Clamped::Yes);
    };
    let end = line_content_end(rope, start);
    let character = pos.character as usize;
    match encoding {
        PositionEncoding::Utf32 => {
            if character > end - start {
                (end, Clamped::Yes)
            } else {
                (start + character, Clamped::No)
            }
        }
        PositionEncoding::Utf16 => {
            let (s, e) = (rope.char_to_utf16_cu(start), rope.char_to_utf16_cu(end));
            if character > e - s {
                return (end, Clamped::Yes);
            }
            let target = s + character;
            // Rounds down to the char holding `target` if it is the second half of a pair.
            let c = rope.utf16_cu_to_char(target);
            (c, Clamped::from_bool(rope.char_to_utf16_cu(c) != target))
        }
        PositionEncoding::Utf8 => {
            let (s, e) = (rope.char_to_byte(start), rope.char_to_byte(end));
            if character > e - s {
                return (end, Clamped::Yes);
            }
            let target = s + character;
            // Rounds down to the char holding `target` if it is inside a UTF-8 sequence.
            let c = rope.byte_to_char(target);
            (c, Clamped::from_bool(rope.char_to_byte(c) != target))
        }
    }
}

/// The LSP position of char index `char_idx`.
///
/// Clamps (and says so) an index past the end of the document to the end, and an index
/// between `\r` and `\n` to the end of its line. Never produces a position inside a
/// character.
pub fn char_to_position(
    rope: &Rope,
    char_idx: usize,
    encoding: PositionEncoding,
) -> (Position, Clamped) {
    let mut clamped = Clamped::from_bool(char_idx > rope.len_chars());
    let mut char_idx = char_idx.min(rope.len_chars());
    if is_inside_crlf(rope, char_idx) {
        char_idx -= 1;
        clamped = Clamped::Yes;
    }
    let (line, start) = char_to_line(rope, char_idx);
    let character = units_between(rope, start, char_idx, encoding);
    (
        Position::new(saturating_u32(line), saturating_u32(character)),
        clamped,
    )
}

/// The char range an LSP range names; see [`position_to_char`] for the clamping. A reversed
/// range is put in order and reported as clamped.
pub fn range_to_chars(
    rope: &Rope,
    range: Range,
    encoding: PositionEncoding,
) -> (CharRange<usize>, Clamped) {
    let (start, c1) = position_to_char(rope, range.start, encoding);
    let (end, c2) = position_to_char(rope, range.end, encoding);
    if start <= end {
        (start..end, c1 | c2)
    } else {
        (end..start, Clamped::Yes)
    }
}

/// The LSP range of a char range; see [`char_to_position`] for the clamping.
pub fn chars_to_range(
    rope: &Rope,
    range: CharRange<usize>,
    encoding: PositionEncoding,
) -> (Range, Clamped) {
    let (start, c1) = char_to_position(rope, range.start, encoding);
    let (end, c2) = char_to_position(rope, range.end.max(range.start), encoding);
    (
        Range::new(start, end),
        c1 | c2 | Clamped::from_bool(range.end < range.start),
    )
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// char index <-> UTF-16 offset (the CRDT's unit)
// ---------------------------------------------------------------------------------------------

/// UTF-16 code unit offset of char index `char_idx`; an index past the end is clamped.
pub fn char_to_utf16(rope: &Rope, char_idx: usize) -> (usize, Clamped) {
    let clamped = Clamped::from_bool(char_idx > rope.len_chars());
    (
        rope.char_to_utf16_cu(char_idx.min(rope.len_chars())),
        clamped,
    )
}

/// Char index of UTF-16 offset `cu`. An offset past the end is clamped to the end; an offset
/// between the two halves of a surrogate pair resolves to the start of that character. Both
/// are reported.
pub fn utf16_to_char(rope: &Rope, cu: usize) -> (usize, Clamped) {
    if cu > rope.len_utf16_cu() {
        return (rope.len_chars(), Clamped::Yes);
    }
    let c = rope.utf16_cu_to_char(cu);
    (c, Clamped::from_bool(rope.char_to_utf16_cu(c) != cu))
}

/// The position (in `encoding`) of UTF-16 offset `cu`, as the CRDT counts: a peer's cursor, a
/// change of the room. An offset past the end is clamped to the end.
pub fn utf16_to_position(rope: &Rope, cu: usize, encoding: PositionEncoding) -> Position {
    let (c, _) = utf16_to_char(rope, cu);
    char_to_position(rope, c, encoding).0
}

/// Number of UTF-16 code units in `s`.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use PositionEncoding::*;

    const ALL: [PositionEncoding; 3] = [Utf8, Utf16, Utf32];

    fn pos(line: u32, character: u32) -> Position {
        Position::new(line, character)
    }

    fn to_char(text: &str, p: Position, e: PositionEncoding) -> (usize, Clamped) {
        position_to_char(&Rope::from_str(text), p, e)
    }

    fn to_pos(text: &str, c: usize, e: PositionEncoding) -> (Position, Clamped) {
        char_to_position(&Rope::from_str(text), c, e)
    }

    /// Reference implementation over a plain `&str`: LSP lines, then units per encoding.
    fn reference_positions(text: &str, e: PositionEncoding) -> Vec<Position> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let (mut line, mut col) = (0u32, 0u32);
        for (i, &c) in chars.iter().enumerate() {
            out.push(pos(line, col));
            let next_is_lf = chars.get(i + 1) == Some(&'\n');
            if c == '\n' || (c == '\r' && !next_is_lf) {
                line += 1;
                col = 0;
            } else if c != '\r' {
                // (A CR before LF adds nothing: the gap after it has no position of its own.)
                col += match e {
                    Utf8 => c.len_utf8(),
                    Utf16 => c.len_utf16(),
                    Utf32 => 1,
                } as u32;
            }
        }
        out.push(pos(line, col));
        out
    }

    #[test]
    fn negotiation_prefers_utf32_then_utf8_then_utf16() {
        let k = |s: &'static str| PositionEncodingKind::new(s);
        assert_eq!(PositionEncoding::negotiate_offered(None), Utf16);
        assert_eq!(PositionEncoding::negotiate_offered(Some(&[])), Utf16);
        // Neovim's and Helix's offers.
        assert_eq!(
            PositionEncoding::negotiate_offered(Some(&[k("utf-8"), k("utf-16"), k("utf-32")])),
            Utf32
        );
        assert_eq!(
            PositionEncoding::negotiate_offered(Some(&[k("utf-8"), k("utf-32"), k("utf-16")])),
            Utf32
        );
        assert_eq!(
            PositionEncoding::negotiate_offered(Some(&[k("utf-16"), k("utf-8")])),
            Utf8
        );
        assert_eq!(
            PositionEncoding::negotiate_offered(Some(&[k("utf-16")])),
            Utf16
        );
        assert_eq!(
            PositionEncoding::negotiate_offered(Some(&[k("latin-1")])),
            Utf16
        );
        let mut caps = ClientCapabilities::default();
        assert_eq!(PositionEncoding::negotiate(&caps), Utf16);
        caps.general = Some(tower_lsp::lsp_types::GeneralClientCapabilities {
            position_encodings: Some(vec![k("utf-8")]),
            ..Default::default()
        });
        assert_eq!(PositionEncoding::negotiate(&caps), Utf8);
    }

    #[test]
    fn kinds_round_trip() {
        for e in ALL {
            assert_eq!(PositionEncoding::from_kind(&e.kind()), Some(e));
            assert_eq!(
                PositionEncoding::try_from(&PositionEncodingKind::from(e)),
                Ok(e)
            );
        }
        assert_eq!(
            PositionEncoding::from_kind(&PositionEncodingKind::new("utf-7")),
            None
        );
    }

    #[test]
    fn ascii_positions_are_the_same_in_every_encoding() {
        for e in ALL {
            assert_eq!(to_char("hello\nworld", pos(1, 3), e), (9, Clamped::No));
            assert_eq!(to_pos("hello\nworld", 9, e), (pos(1, 3), Clamped::No));
        }
    }

    #[test]
    fn two_byte_char_counts_two_in_utf8_only() {
        // "é" is 2 bytes, 1 UTF-16 unit, 1 char.
        let t = "aéb";
        assert_eq!(to_char(t, pos(0, 3), Utf8), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf16), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf32), (2, Clamped::No));
        assert_eq!(to_pos(t, 2, Utf8).0, pos(0, 3));
        assert_eq!(to_pos(t, 2, Utf16).0, pos(0, 2));
    }

    #[test]
    fn three_byte_cjk_char() {
        let t = "世界x";
        assert_eq!(to_char(t, pos(0, 6), Utf8), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf16), (2, Clamped::No));
        assert_eq!(to_pos(t, 2, Utf8).0, pos(0, 6));
        assert_eq!(to_pos(t, 2, Utf16).0, pos(0, 2));
        assert_eq!(to_pos(t, 2, Utf32).0, pos(0, 2));
    }

    #[test]
    fn astral_char_is_two_utf16_units_and_four_bytes() {
        let t = "a🎉b";
        assert_eq!(to_char(t, pos(0, 3), Utf16), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 5), Utf8), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf32), (2, Clamped::No));
        assert_eq!(to_pos(t, 2, Utf16).0, pos(0, 3));
        assert_eq!(to_pos(t, 2, Utf8).0, pos(0, 5));
        assert_eq!(to_pos(t, 3, Utf16).0, pos(0, 4));
    }

    #[test]
    fn position_inside_surrogate_pair_resolves_to_char_start() {
        let t = "a🎉b";
        assert_eq!(to_char(t, pos(0, 2), Utf16), (1, Clamped::Yes));
    }

    #[test]
    fn position_inside_utf8_sequence_resolves_to_char_start() {
        let t = "a🎉b世";
        for byte in 2..=4 {
            assert_eq!(
                to_char(t, pos(0, byte), Utf8),
                (1, Clamped::Yes),
                "byte {byte}"
            );
        }
        assert_eq!(to_char(t, pos(0, 7), Utf8), (3, Clamped::Yes));
        assert_eq!(to_char("é", pos(0, 1), Utf8), (0, Clamped::Yes));
    }

    #[test]
    fn combining_marks_are_separate_chars() {
        // "e" + U+0301 COMBINING ACUTE: two chars, 3 bytes, 2 UTF-16 units.
        let t = "e\u{301}x";
        assert_eq!(to_char(t, pos(0, 1), Utf32), (1, Clamped::No));
        assert_eq!(to_char(t, pos(0, 3), Utf8), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf16), (2, Clamped::No));
        assert_eq!(to_pos(t, 1, Utf8).0, pos(0, 1));
    }

    #[test]
    fn crlf_is_one_line_break() {
        let t = "ab\r\ncd\r\n";
        let r = Rope::from_str(t);
        assert_eq!(line_count(&r), 3);
        for e in ALL {
            assert_eq!(to_char(t, pos(1, 0), e), (4, Clamped::No));
            assert_eq!(to_char(t, pos(1, 2), e), (6, Clamped::No));
            // Past the end of line 0 clamps before the CR.
            assert_eq!(to_char(t, pos(0, 3), e), (2, Clamped::Yes));
            assert_eq!(to_char(t, pos(2, 0), e), (8, Clamped::No));
            assert_eq!(to_pos(t, 8, e), (pos(2, 0), Clamped::No));
            assert_eq!(to_pos(t, 2, e), (pos(0, 2), Clamped::No));
        }
    }

    #[test]
    fn char_between_cr_and_lf_clamps_to_line_end() {
        let t = "ab\r\ncd";
        for e in ALL {
            assert_eq!(to_pos(t, 3, e), (pos(0, 2), Clamped::Yes));
        }
        assert!(is_inside_crlf(&Rope::from_str(t), 3));
        assert!(!is_inside_crlf(&Rope::from_str(t), 2));
    }

    #[test]
    fn lone_cr_is_a_line_break() {
        let t = "ab\rcd\re";
        assert_eq!(line_count(&Rope::from_str(t)), 3);
        for e in ALL {
            assert_eq!(to_char(t, pos(1, 1), e), (4, Clamped::No));
            assert_eq!(to_char(t, pos(2, 0), e), (6, Clamped::No));
            assert_eq!(to_pos(t, 3, e).0, pos(1, 0));
            assert_eq!(to_pos(t, 2, e).0, pos(0, 2));
        }
        // Mixed: CR, CRLF, LF, trailing CR.
        let t = "a\rb\r\nc\nd\r";
        assert_eq!(line_count(&Rope::from_str(t)), 5);
        assert_eq!(to_char(t, pos(4, 0), Utf16), (9, Clamped::No));
        assert_eq!(to_char(t, pos(3, 0), Utf16), (7, Clamped::No));
    }

    #[test]
    fn unicode_line_breaks_are_not_lsp_line_breaks() {
        // Ropey's default `unicode_lines` would see 6 lines here; LSP sees 2.
        let t = "a\u{2028}b\u{2029}c\u{85}d\u{0B}e\u{0C}f\ng";
        let r = Rope::from_str(t);
        assert_eq!(line_count(&r), 2);
        assert_eq!(line_to_char(&r, 1), Some(12));
        assert_eq!(line_to_char(&r, 2), None);
        assert_eq!(char_to_line(&r, 11), (0, 0));
        assert_eq!(char_to_line(&r, 12), (1, 12));
        // U+2028 is 3 bytes, 1 UTF-16 unit; U+0085 is 2 bytes.
        assert_eq!(to_char(t, pos(0, 4), Utf8), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 2), Utf16), (2, Clamped::No));
        assert_eq!(to_char(t, pos(0, 11), Utf32), (11, Clamped::No));
        assert_eq!(to_char(t, pos(0, 12), Utf32), (11, Clamped::Yes));
        assert_eq!(to_char(t, pos(1, 1), Utf32), (13, Clamped::No));
        assert_eq!(to_pos(t, 10, Utf32).0, pos(0, 10));
        assert_eq!(to_pos(t, 13, Utf8).0, pos(1, 1));
        assert_eq!(to_pos(t, 6, Utf8).0, pos(0, 11));
    }

    #[test]
    fn empty_document() {
        let r = Rope::new();
        assert_eq!(line_count(&r), 1);
        for e in ALL {
            assert_eq!(to_char("", pos(0, 0), e), (0, Clamped::No));
            assert_eq!(to_char("", pos(0, 5), e), (0, Clamped::Yes));
            assert_eq!(to_char("", pos(3, 0), e), (0, Clamped::Yes));
            assert_eq!(to_pos("", 0, e), (pos(0, 0), Clamped::No));
            assert_eq!(to_pos("", 7, e), (pos(0, 0), Clamped::Yes));
        }
    }

    #[test]
    fn trailing_newline_makes_an_empty_last_line() {
        let t = "ab\n";
        assert_eq!(line_count(&Rope::from_str(t)), 2);
        for e in ALL {
            assert_eq!(to_char(t, pos(1, 0), e), (3, Clamped::No));
            assert_eq!(to_pos(t, 3, e), (pos(1, 0), Clamped::No));
            // The line after the last one is past the end: end of document, reported.
            assert_eq!(to_char(t, pos(2, 0), e), (3, Clamped::Yes));
        }
    }

    #[test]
    fn positions_past_the_end_clamp() {
        let t = "héllo\n🎉x";
        for e in ALL {
            assert_eq!(to_char(t, pos(0, 99), e), (5, Clamped::Yes));
            assert_eq!(to_char(t, pos(1, 99), e), (8, Clamped::Yes));
            assert_eq!(to_char(t, pos(9, 0), e), (8, Clamped::Yes));
            assert_eq!(to_char(t, pos(u32::MAX, u32::MAX), e), (8, Clamped::Yes));
            assert_eq!(to_pos(t, 100, e).1, Clamped::Yes);
        }
        assert_eq!(to_pos(t, 100, Utf16).0, pos(1, 3));
    }

    #[test]
    fn ranges_convert_and_reversed_ranges_are_ordered() {
        let r = Rope::from_str("ab\ncd");
        let range = Range::new(pos(1, 1), pos(0, 1));
        assert_eq!(range_to_chars(&r, range, Utf16), (1..4, Clamped::Yes));
        let range = Range::new(pos(0, 1), pos(1, 1));
        assert_eq!(range_to_chars(&r, range, Utf16), (1..4, Clamped::No));
        assert_eq!(chars_to_range(&r, 1..4, Utf8), (range, Clamped::No));
    }

    #[test]
    fn utf16_offsets_round_trip_and_clamp() {
        let r = Rope::from_str("a🎉é世\n");
        assert_eq!(char_to_utf16(&r, 2), (3, Clamped::No));
        assert_eq!(utf16_to_char(&r, 3), (2, Clamped::No));
        assert_eq!(utf16_to_char(&r, 2), (1, Clamped::Yes));
        assert_eq!(utf16_to_char(&r, 99), (r.len_chars(), Clamped::Yes));
        assert_eq!(char_to_utf16(&r, 99), (r.len_utf16_cu(), Clamped::Yes));
        assert_eq!(utf16_len("a🎉é世\n"), r.len_utf16_cu());
        for c in 0..=r.len_chars() {
            let (cu, _) = char_to_utf16(&r, c);
            assert_eq!(utf16_to_char(&r, cu), (c, Clamped::No));
        }
    }

    /// Every char index of a mixed text, in every encoding: char -> position matches a
    /// reference, and position -> char gives the index back.
    #[test]
    fn every_char_index_round_trips_in_every_encoding() {
        let texts = [
            "",
            "plain ascii",
            "héllo wörld\n世界 🎉🎉 e\u{301}\r\nline\rlone\u{2028}ls\n\n🎉",
            "\r\n\r\n\r\r\n\n",
            "🎉\n🎉\r🎉\r\n",
            "a\u{0C}b\u{85}c\u{0B}\u{2029}\n\u{2028}",
        ];
        for text in texts {
            let rope = Rope::from_str(text);
            for e in ALL {
                let expected = reference_positions(text, e);
                for (c, want) in expected.iter().enumerate() {
                    let (p, clamped) = char_to_position(&rope, c, e);
                    if is_inside_crlf(&rope, c) {
                        assert_eq!(clamped, Clamped::Yes);
                        continue;
                    }
                    assert_eq!(
                        (p, clamped),
                        (*want, Clamped::No),
                        "{text:?} char {c} {e:?}"
                    );
                    assert_eq!(
                        position_to_char(&rope, p, e),
                        (c, Clamped::No),
                        "{text:?} char {c} {e:?}"
                    );
                }
            }
        }
    }

    /// A larger text with many chunks, so chunk boundaries (including CRLF pairs split across
    /// chunks) are exercised by the scanning path and the ropey path alike.
    #[test]
    fn long_mixed_text_round_trips() {
        let unit = "ab\r\n世🎉\ré\u{2028}x\n";
        let text: String = unit.repeat(500);
        let rope = Rope::from_str(&text);
        assert_eq!(line_count(&rope), 1500 + 1);
        for e in ALL {
            let expected = reference_positions(&text, e);
            for c in (0..=rope.len_chars()).step_by(7) {
                if is_inside_crlf(&rope, c) {
                    continue;
                }
                let (p, _) = char_to_position(&rope, c, e);
                assert_eq!(p, expected[c]);
                assert_eq!(position_to_char(&rope, p, e), (c, Clamped::No));
            }
        }
        let plain: String = "ab\r\ncd\rxy\n".repeat(700);
        let rope = Rope::from_str(&plain);
        for c in (0..=rope.len_chars()).step_by(5) {
            if is_inside_crlf(&rope, c) {
                continue;
            }
            let (p, _) = char_to_position(&rope, c, Utf16);
            assert_eq!(position_to_char(&rope, p, Utf16), (c, Clamped::No));
        }
    }

    #[test]
    fn never_panics_on_arbitrary_positions() {
        let texts = ["", "a", "🎉", "\r", "\r\n", "a\u{2028}\n世\r"];
        for text in texts {
            let rope = Rope::from_str(text);
            for e in ALL {
                for line in [0, 1, 2, 3, 100, u32::MAX] {
                    for character in [0, 1, 2, 3, 4, 5, 100, u32::MAX] {
                        let (c, _) = position_to_char(&rope, pos(line, character), e);
                        assert!(c <= rope.len_chars());
                        // And back: a valid, exact position.
                        let (p, _) = char_to_position(&rope, c, e);
                        if !is_inside_crlf(&rope, c) {
                            assert_eq!(position_to_char(&rope, p, e), (c, Clamped::No));
                        }
                    }
                }
            }
        }
    }
}
