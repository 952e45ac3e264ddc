//! The chat page: found and read once, at startup. The loop never touches the disk.
//!
//! `--templates DIR` names a directory that must hold `index.html`. Without
//! it, `./templates/index.html` is used when it exists (so editing the page
//! in a checkout needs no rebuild), and otherwise the copy compiled into the
//! binary, so that `eddy` runs from any directory.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use tungstenite::Bytes;

/// The page compiled into the binary.
const BUILT_IN_PAGE: &[u8] = include_bytes!("../templates/index.html");

/// The directory looked in when `--templates` is not given.
const DEFAULT_TEMPLATES: &str = "templates";

/// The page's file name inside the template directory (the tutorial's).
const PAGE_FILE: &str = "index.html";

/// Where the served page came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageSource {
    /// A file on disk.
    File(PathBuf),
    /// The copy compiled into the binary.
    BuiltIn,
}

impl fmt::Display for PageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageSource::File(path) => write!(f, "{}", path.display()),
            PageSource::BuiltIn => f.write_str("the built-in page"),
        }
    }
}

/// Reads the page: from `templates` if given (an error if it has no
/// `index.html`), else from `./templates`, else the built-in copy.
pub fn load(templates: Option<&Path>) -> io::Result<(Bytes, PageSource)> {
    let path = match templates {
        Some(dir) => dir.join(PAGE_FILE),
        None => {
            let default = Path::new(DEFAULT_TEMPLATES).join(PAGE_FILE);
            if !default.is_file() {
                return Ok((Bytes::from_static(BUILT_IN_PAGE), PageSource::BuiltIn));
            }
            default
        }
    };
    match std::fs::read(&path) {
        Ok(html) => Ok((Bytes::from(html), PageSource::File(path))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read the page {}: {e}", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_directory_without_index_html_is_an_error() {
        let dir = std::env::temp_dir().join(format!("eddy-page-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = load(Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("index.html"), "{err}");
        std::fs::write(dir.join("index.html"), "<p>x</p>").unwrap();
        let (page, source) = load(Some(&dir)).unwrap();
        assert_eq!(&page[..], b"<p>x</p>");
        assert_eq!(source, PageSource::File(dir.join("index.html")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_built_in_page_is_the_checked_in_template() {
        let on_disk =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/index.html")).unwrap();
        assert_eq!(BUILT_IN_PAGE, &on_disk[..]);
    }
}
