//! Reading what a pipeline child process logged or printed.

/// The summary a child (`tidemark run`, `replicate`, `bench-consume`) printed: the last line of
/// its `stdout` that is JSON.
pub fn summary_line(stdout: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

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

    #[test]
    fn the_summary_is_the_last_json_line() {
        let out = b"{\"n\":1}\nnot json\n{\"n\":2}\ntrailing text\n";
        assert_eq!(super::summary_line(out).unwrap()["n"], 2);
        assert!(super::summary_line(b"no json at all\n").is_none());
    }
}
