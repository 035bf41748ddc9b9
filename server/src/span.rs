//! Where two texts differ: the one span a restore replaces and a stored version patches. Shared
//! by the server and the bridge, which restore the same way.

/// Where two texts differ: the byte offset of the first difference, how many bytes of `old`
/// from there make way, and what `new` has in their place. Offsets fall on character
/// boundaries.
pub fn differing_span<'a>(old: &str, new: &'a str) -> (usize, usize, &'a str) {
    let mut head = old
        .bytes()
        .zip(new.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !old.is_char_boundary(head) || !new.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = old[head..]
        .bytes()
        .rev()
        .zip(new[head..].bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    while !old.is_char_boundary(old.len() - tail) || !new.is_char_boundary(new.len() - tail) {
        tail -= 1;
    }
    (head, old.len() - head - tail, &new[head..new.len() - tail])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_replaces_only_the_span_that_differs_on_character_boundaries() {
        assert_eq!(differing_span("abcXdef", "abcYYdef"), (3, 1, "YY"));
        assert_eq!(differing_span("same", "same"), (4, 0, ""));
        assert_eq!(differing_span("", "new"), (0, 0, "new"));
        assert_eq!(differing_span("old", ""), (0, 3, ""));
        // é (C3 A9) and è (C3 A8) share their first byte; 🎉 and 🎊 their first three.
        assert_eq!(differing_span("café!", "cafè!"), (3, 2, "è"));
        assert_eq!(differing_span("a🎉b", "a🎊b"), (1, 4, "🎊"));
        // Repeats: the shared tail never overlaps the shared head.
        assert_eq!(differing_span("aa", "aaa"), (2, 0, "a"));
    }
}
