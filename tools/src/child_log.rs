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

/// The last `lines` lines of the log at `path` (colours stripped), indented, for an error
/// that names a failed child: a test's temporary directory, and the log with it, is gone by
/// the time anyone reads its failure. Says so when the log cannot be read.
pub fn tail_of(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (the log {} cannot be read: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tail_is_the_last_lines_without_colours() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("child.log");
        std::fs::write(&log, "one\ntwo\n\u{1b}[31mERROR\u{1b}[0m three\n").unwrap();
        assert_eq!(super::tail_of(&log, 2), "    two\n    ERROR three");
        assert_eq!(super::tail_of(&log, 9), "    one\n    two\n    ERROR three");
        let missing = super::tail_of(&dir.path().join("gone.log"), 2);
        assert!(
            missing.contains("gone.log") && missing.contains("cannot be read"),
            "{missing}"
        );
    }

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
