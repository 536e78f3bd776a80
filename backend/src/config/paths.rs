//! Where the server's directories are, as the file system sees them: the
//! data directory must not be inside the bundle directory, whose files are
//! served to everyone (`--bundle-dir .` would otherwise serve
//! `natter-data/natter.db`).

use std::path::{Component, Path, PathBuf};

/// `path` as an absolute path with symbolic links resolved, also when it does
/// not exist yet: its nearest existing ancestor is canonicalized and the rest
/// appended (`.` dropped, `..` taken back lexically).
pub fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let mut existing = absolute.as_path();
    let mut tail = Vec::new();
    let base = loop {
        match existing.canonicalize() {
            Ok(base) => break base,
            Err(e) => match (existing.parent(), existing.components().next_back()) {
                (Some(parent), Some(last)) => {
                    tail.push(last);
                    existing = parent;
                }
                _ => return Err(e),
            },
        }
    };
    let mut resolved = base;
    for part in tail.iter().rev() {
        match part {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => resolved.push(name),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(resolved)
}

/// True when `data` is `bundle` or inside it (both as [`resolve`]d).
pub fn is_inside(data: &Path, bundle: &Path) -> std::io::Result<bool> {
    Ok(resolve(data)?.starts_with(resolve(bundle)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("natter-paths-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create");
            Self(dir.canonicalize().expect("canonical"))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_missing_path_resolves_through_its_nearest_existing_ancestor() {
        let s = Scratch::new("missing");
        assert_eq!(resolve(&s.0.join("a/b/../c/./d")).expect("resolves"), s.0.join("a/c/d"));
        std::fs::create_dir(s.0.join("real")).expect("create");
        assert_eq!(resolve(&s.0.join("real/../real/x")).expect("resolves"), s.0.join("real/x"));
    }

    #[test]
    fn data_inside_the_bundle_is_found_even_before_it_exists() {
        let s = Scratch::new("inside");
        let bundle = s.0.join("dist");
        std::fs::create_dir(&bundle).expect("create");
        assert!(is_inside(&bundle.join("natter-data"), &bundle).expect("checks"));
        assert!(is_inside(&bundle, &bundle).expect("checks"), "the same directory");
        assert!(is_inside(&s.0.join("dist/./x/../natter-data"), &bundle).expect("checks"));
        assert!(!is_inside(&s.0.join("natter-data"), &bundle).expect("checks"), "a sibling");
        assert!(!is_inside(&s.0.join("dist-data"), &bundle).expect("checks"), "a name that only starts alike");
        assert!(!is_inside(&s.0, &bundle).expect("checks"), "the bundle inside the data directory is fine");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_into_the_bundle_counts_as_inside() {
        let s = Scratch::new("link");
        let bundle = s.0.join("dist");
        std::fs::create_dir_all(bundle.join("data")).expect("create");
        std::os::unix::fs::symlink(bundle.join("data"), s.0.join("data-link")).expect("symlink");
        assert!(is_inside(&s.0.join("data-link"), &bundle).expect("checks"));
        assert!(is_inside(&s.0.join("data-link/new"), &bundle).expect("checks"));
    }
}
