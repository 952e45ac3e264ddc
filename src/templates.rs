//! The template directory: the page and its files, read once at startup.
//! The loop never touches the disk.
//!
//! `--templates DIR` names a directory that must hold `index.html`. Without
//! it, `./templates` is used when it holds `index.html` (so editing the page
//! in a checkout needs no rebuild), and otherwise the copies compiled into
//! the binary, so that `eddy` runs from any directory.
//!
//! Every regular file directly in the directory is served at `/<name>`
//! (`index.html` also at `/`), publicly: keep nothing else there. Hidden
//! files, subdirectories and symlinks are not served. The page's script and
//! style are files, not inline blocks, so that the Content-Security-Policy can say
//! `script-src 'self'` and nothing else. Each file gets an `ETag` computed
//! from its bytes, so browsers can revalidate it cheaply.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use log::warn;
use tungstenite::Bytes;

/// The files compiled into the binary: the checked-in `templates/`.
const BUILT_IN: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../templates/index.html")),
    ("chat.js", include_bytes!("../templates/chat.js")),
    ("chat.css", include_bytes!("../templates/chat.css")),
    ("favicon.svg", include_bytes!("../templates/favicon.svg")),
];

/// The directory looked in when `--templates` is not given.
const DEFAULT_DIR: &str = "templates";

/// The page's file name (the tutorial's), served at `/` too.
pub const INDEX: &str = "index.html";

/// Files larger than this are not served (and are logged). A chat page
/// needs kilobytes; the cap keeps a stray file from costing memory forever.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One file, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The file's bytes, shared by every response that sends them.
    pub body: Bytes,
    /// `Content-Type`, from the file's extension.
    pub content_type: &'static str,
    /// A strong validator for `If-None-Match`: a hash of the bytes, quoted.
    pub etag: String,
}

impl Asset {
    fn new(name: &str, body: Bytes) -> Asset {
        Asset {
            etag: format!("\"{:016x}\"", fnv1a(&body)),
            content_type: content_type(name),
            body,
        }
    }
}

/// Where the served files came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory on disk.
    Dir(PathBuf),
    /// The copies compiled into the binary.
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Dir(path) => write!(f, "{}", path.display()),
            Source::BuiltIn => f.write_str("the built-in page"),
        }
    }
}

/// The files to serve, by URL path (`/`, `/index.html`, `/chat.js`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assets {
    by_path: HashMap<String, Asset>,
}

impl Assets {
    /// The file served at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Asset> {
        self.by_path.get(path)
    }

    /// Assets from `(file name, bytes)` pairs; `index.html` is also `/`.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, Bytes)>) -> Assets {
        let mut by_path = HashMap::new();
        for (name, body) in files {
            let asset = Asset::new(name, body);
            if name == INDEX {
                by_path.insert("/".to_owned(), asset.clone());
            }
            by_path.insert(format!("/{name}"), asset);
        }
        Assets { by_path }
    }
}

/// Reads the files: from `dir` if given (an error if it has no
/// `index.html`), else from `./templates` if it has one, else built in.
pub fn load(dir: Option<&Path>) -> io::Result<(Assets, Source)> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None if Path::new(DEFAULT_DIR).join(INDEX).is_file() => PathBuf::from(DEFAULT_DIR),
        None => {
            let files = BUILT_IN
                .iter()
                .map(|&(name, bytes)| (name, Bytes::from_static(bytes)));
            return Ok((Assets::from_files(files), Source::BuiltIn));
        }
    };
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("templates {}: {e}", dir.display()));
    if !dir.join(INDEX).is_file() {
        let e = io::Error::new(io::ErrorKind::NotFound, format!("no {INDEX} in it"));
        return Err(context(e));
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(context)? {
        let entry = entry.map_err(context)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Regular files only: no directories, and no symlinks, which could
        // publish files from outside the directory.
        if !is_servable_name(&name) || !entry.file_type().map_err(context)?.is_file() {
            continue;
        }
        match read_capped(&entry.path()).map_err(context)? {
            Some(body) => files.push((name, body)),
            None if name == INDEX => {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{INDEX} is over {MAX_FILE_BYTES} bytes"),
                );
                return Err(context(e));
            }
            None => warn!(
                "not serving {}: over {MAX_FILE_BYTES} bytes",
                entry.path().display()
            ),
        }
    }
    if !files.iter().any(|(name, _)| name == INDEX) {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{INDEX} must be a regular file"),
        );
        return Err(context(e));
    }
    let assets = Assets::from_files(
        files
            .iter()
            .map(|(name, body)| (name.as_str(), body.clone())),
    );
    Ok((assets, Source::Dir(dir)))
}

/// The file's bytes, or `None` if it is over [`MAX_FILE_BYTES`]. Reads at
/// most one byte past the cap, so a file growing meanwhile cannot get by.
fn read_capped(path: &Path) -> io::Result<Option<Bytes>> {
    use std::io::Read;
    let mut body = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut body)?;
    Ok((body.len() as u64 <= MAX_FILE_BYTES).then(|| Bytes::from(body)))
}

/// Names that can appear in a URL path as they are, and are not hidden.
fn is_servable_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn content_type(name: &str) -> &'static str {
    match name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64 bits: a small, stable hash for ETags (not for security: an
/// ETag only has to change when the bytes do).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("eddy-templates-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_explicit_directory_without_index_html_is_an_error() {
        let dir = temp_dir("empty");
        let err = load(Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("index.html"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_plain_file_is_served_with_its_type_and_hidden_ones_are_not() {
        let dir = temp_dir("files");
        std::fs::write(dir.join("index.html"), "<p>x</p>").unwrap();
        std::fs::write(dir.join("app.js"), "1").unwrap();
        std::fs::write(dir.join(".secret"), "no").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let (assets, source) = load(Some(&dir)).unwrap();
        assert_eq!(source, Source::Dir(dir.clone()));
        assert_eq!(assets.get("/").unwrap().body, "<p>x</p>");
        assert_eq!(assets.get("/index.html"), assets.get("/"));
        assert_eq!(
            assets.get("/app.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        assert!(assets.get("/.secret").is_none() && assets.get("/sub").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_are_not_followed_and_an_oversized_index_is_an_error() {
        let dir = temp_dir("links");
        std::fs::write(dir.join("index.html"), "<p>x</p>").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("leak.txt")).unwrap();
        let (assets, _) = load(Some(&dir)).unwrap();
        assert!(assets.get("/leak.txt").is_none());
        let big = vec![b' '; MAX_FILE_BYTES as usize + 1];
        std::fs::write(dir.join("index.html"), &big).unwrap();
        let err = load(Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("over"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn etags_follow_the_bytes() {
        let a = Asset::new("a.txt", Bytes::from_static(b"one"));
        let b = Asset::new("b.txt", Bytes::from_static(b"one"));
        let c = Asset::new("c.txt", Bytes::from_static(b"two"));
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.etag, c.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"') && a.etag.len() == 18);
    }

    #[test]
    fn the_built_in_files_are_the_checked_in_templates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let (on_disk, _) = load(Some(&dir)).unwrap();
        let built_in =
            Assets::from_files(BUILT_IN.iter().map(|&(n, b)| (n, Bytes::from_static(b))));
        assert_eq!(
            on_disk, built_in,
            "templates/ and BUILT_IN list the same files"
        );
    }
}
