//! Embeds the built chat page (trunk's `dist/`) into the `natter` binary,
//! with each file's gzip and brotli forms made here, once, at build time.
//!
//! The page is embedded when `NATTER_EMBED_BUNDLE` names a built bundle
//! (`cargo xtask test`/`dist` set it), or else, when the variable is not set
//! at all, when the repository's `dist/` holds an `index.html`; set and
//! empty, nothing is embedded. Without one the binary serves `--bundle-dir`
//! (default `dist`) from disk, or the page that says how to build it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Brotli's best quality and a 4 MiB window: a bundle is compressed once.
const BROTLI_QUALITY: u32 = 11;
const BROTLI_WINDOW_LOG: u32 = 22;

fn main() {
    println!("cargo:rerun-if-env-changed=NATTER_EMBED_BUNDLE");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bundle = match std::env::var_os("NATTER_EMBED_BUNDLE") {
        // Set and empty: nothing (`cargo xtask run` builds the server while
        // trunk rewrites dist/, and serves dist/ from disk).
        Some(dir) if dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            let dist = manifest.join("..").join("dist");
            dist.join("index.html").is_file().then_some(dist)
        }
    };
    let mut table = String::from("&[\n");
    if let Some(bundle) = bundle {
        // Any change in the bundle (trunk rewrites it whole) embeds it again.
        println!("cargo:rerun-if-changed={}", bundle.display());
        if !bundle.join("index.html").is_file() {
            panic!(
                "NATTER_EMBED_BUNDLE={} holds no index.html; build the page first (cargo xtask bundle)",
                bundle.display()
            );
        }
        let mut files = Vec::new();
        collect(&bundle, &bundle, &mut files);
        files.sort();
        for (n, (path, file)) in files.iter().enumerate() {
            let raw = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let gz = out.join(format!("page-{n}.gz"));
            let br = out.join(format!("page-{n}.br"));
            std::fs::write(&gz, gzip(&raw)).expect("write gzip");
            std::fs::write(&br, brotli(&raw)).expect("write brotli");
            let _ = writeln!(
                table,
                "    EmbeddedFile {{ path: {path:?}, body: include_bytes!({file:?}), gzip: include_bytes!({gz:?}), \
                 brotli: include_bytes!({br:?}), etag: \"\\\"{:016x}\\\"\" }},",
                fnv1a(&raw)
            );
        }
    }
    table.push(']');
    std::fs::write(out.join("page.rs"), table).expect("write page.rs");
}

/// Every file under `dir`, with its path relative to `root` ('/'-separated).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(relative) = path.strip_prefix(root) {
            let name: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push((name.join("/"), path.canonicalize().unwrap_or(path.clone())));
        }
    }
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(raw).expect("gzip");
    encoder.finish().expect("gzip")
}

fn brotli(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut out, 64 * 1024, BROTLI_QUALITY, BROTLI_WINDOW_LOG);
        writer.write_all(raw).expect("brotli");
    }
    out
}

/// A content hash for the ETag (64-bit FNV-1a: identifies a version, not a secret).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
