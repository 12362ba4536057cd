//! Where an operator points a Drover tool: an `http://` or `https://` URL,
//! or a local path (a directory on a USB stick, a file). One parser, for
//! the agent's `--from` and the installer's `--image`.

use std::path::PathBuf;

/// A URL or a local path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `http://` or `https://`.
    Url(String),
    /// Anything else, taken as a path.
    Local(PathBuf),
}

impl Location {
    /// A URL when it has an HTTP scheme, a path otherwise.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            Location::Url(s.to_string())
        } else {
            Location::Local(PathBuf::from(s))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_schemes_are_urls_and_the_rest_are_paths() {
        assert_eq!(
            Location::parse("https://updates.example/drover/"),
            Location::Url("https://updates.example/drover/".into())
        );
        assert_eq!(
            Location::parse("http://10.0.2.100/"),
            Location::Url("http://10.0.2.100/".into())
        );
        assert_eq!(
            Location::parse("/media/usb/drover"),
            Location::Local("/media/usb/drover".into())
        );
        // Not a scheme Drover fetches from: a (strange) relative path.
        assert_eq!(
            Location::parse("ftp://x"),
            Location::Local("ftp://x".into())
        );
    }
}
