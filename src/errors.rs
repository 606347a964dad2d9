//! Errors as a person reads them: an error and its sources on one line.

/// `outer: inner: root`, for log lines and messages a person reads. Sources that the outer
/// message already repeats are left out.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading the whitelist")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn sources_follow_the_error_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(super::chain(&e), "reading the whitelist: disk on fire");
        let repeated = std::io::Error::other(Outer(std::io::Error::other("x")));
        assert_eq!(super::chain(&repeated), "reading the whitelist: x");
    }
}
