//! Channel and room patterns of the token claims (spec §2): `*` matches any run of characters.

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (also none).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` seen, and where in `name` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_matches_any_run() {
        assert!(matches("chat:*", "chat:room1"));
        assert!(matches("chat:*", "chat:"));
        assert!(matches("*", "anything:at#all"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(matches("a*b", "abab"));
        assert!(matches("news", "news"));
        assert!(!matches("chat:*", "chatroom"));
        assert!(!matches("news", "news2"));
        assert!(!matches("a*b", "abac"));
        assert!(!matches("", "x"));
    }
}
