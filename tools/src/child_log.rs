//! Reading what a pipeline child process logged.

/// `text` without ANSI colour sequences (tracing colours its output even into pipes).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_sequences_go_and_text_stays() {
        assert_eq!(super::strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"), "ERROR x");
        assert_eq!(super::strip_ansi("plain"), "plain");
    }
}
