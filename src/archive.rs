//! `ferry deploy --archive FILE`: the image id and tag of a `docker save` or OCI archive, read on
//! the runner before any target is reached.
//!
//! Why read the archive at all, instead of letting `docker load` say what it loaded: the
//! deployment is pinned to the image id before the rollout (labels, records, the `docker run`
//! reference `sha256:<hex>`), a target that already has that id is skipped without sending a
//! byte, and `docker load`'s output (`Loaded image: …`) is not a stable interface. The id is the
//! config blob's SHA-256, which ferry hashes itself: an archive whose manifest names a config
//! that does not hash to its name is refused (exit 2), not deployed under a wrong id.
//!
//! Layouts: the legacy `docker save` (Docker ≤ 24: `manifest.json` naming `<hex>.json`), Docker
//! ≥ 25's (the same `manifest.json`, naming `blobs/sha256/<hex>`) and an OCI image layout
//! (`index.json` → image manifest → `config.digest`; a nested index picks linux/amd64 or its
//! only entry). Exactly one image per archive. The `tar` crate reads the headers (PAX and GNU
//! long names included) and seeks over the layers, so a large archive costs a few reads.
//! Nothing in an archive may panic ferry: sizes are capped before JSON is read into memory.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::diagnostic::Diagnostic;

/// The largest JSON document (manifest, index, config) read from an archive.
const JSON_LIMIT: u64 = 16 << 20;

/// What kind of archive it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `docker save` (has `manifest.json`): every Docker can load it.
    Docker,
    /// An OCI image layout only (`index.json`, no `manifest.json`): Docker before 25 cannot.
    Oci,
}

/// One image archive, as read before the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes (what a target that lacks the image is sent).
    pub size: u64,
    /// `sha256:<hex>` of the image config: the id `docker image inspect` reports.
    pub id: String,
    /// `repo:tag` names it carries (may be empty).
    pub tags: Vec<String>,
    /// Which layout.
    pub layout: Layout,
}

impl ImageArchive {
    /// The tag of its first name (`p5/app:1.0` → `1.0`), if it has one.
    pub fn tag(&self) -> Option<&str> {
        self.tags.iter().find_map(|name| {
            let (_, tag) = name.rsplit_once(':')?;
            (!tag.contains('/')).then_some(tag)
        })
    }
}

/// A reader that counts the bytes read through it: what `--archive` sent to a target.
pub struct Counted<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The file read, named in a read error (which otherwise reaches the user as a bare
    /// "Input/output error" from the SSH layer).
    name: Option<std::path::PathBuf>,
}

impl<R> Counted<R> {
    /// `inner`, counting into `count`.
    pub fn new(inner: R, count: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Counted<R> {
        Counted { inner, count, name: None }
    }

    /// Names `path` in read errors.
    #[must_use]
    pub fn named(self, path: &Path) -> Counted<R> {
        Counted { name: Some(path.to_path_buf()), ..self }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before) as u64;
        self.count.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        match (polled, &self.name) {
            (std::task::Poll::Ready(Err(e)), Some(name)) => std::task::Poll::Ready(Err(std::io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", crate::diagnostic::display_path(name).display()),
            ))),
            (polled, _) => polled,
        }
    }
}

/// An entry of the tar: where its data starts and how long it is.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

/// `manifest.json` of `docker save`: one object per image.
#[derive(Deserialize)]
struct SaveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// An OCI descriptor (index entry or manifest config).
#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// An OCI platform.
#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// An OCI index (`index.json` or a nested image index).
#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// An OCI image manifest (only the config matters).
#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
}

/// Reads the archive at `path` (see the module docs). Any problem is bad input (exit 2).
pub fn read(path: &Path) -> Result<ImageArchive, Diagnostic> {
    let name = crate::diagnostic::display_path(path);
    let fail = |why: String| {
        Diagnostic::new(format!("--archive {}: {why}", name.display())).help(
            "give a file made by `docker save` (or `skopeo copy … docker-archive:FILE`) holding one image",
        )
    };
    let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it: {e}")))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let (id, tags, layout) = inspect(&mut file).map_err(fail)?;
    Ok(ImageArchive { path: path.to_path_buf(), size, id, tags, layout })
}

/// The image id, names and layout of the tar read by `file`.
pub fn inspect<F: Read + Seek>(file: &mut F) -> Result<(String, Vec<String>, Layout), String> {
    let entries = index(file)?;
    let mut blob = |name: &str| read_entry(file, &entries, name);
    if entries.contains_key("manifest.json") {
        let text = blob("manifest.json")?;
        let images: Vec<SaveManifest> = serde_json::from_slice(&text)
            .map_err(|e| format!("manifest.json is not a docker save manifest: {e}"))?;
        let image = one(images, "manifest.json")?;
        let hex = config_hex(&image.config)
            .ok_or_else(|| format!("manifest.json names config \"{}\", not a sha256 blob", image.config))?;
        verify(&blob(&image.config)?, &hex, &image.config)?;
        return Ok((format!("sha256:{hex}"), image.repo_tags.unwrap_or_default(), Layout::Docker));
    }
    if entries.contains_key("index.json") {
        let index: Index = serde_json::from_slice(&blob("index.json")?)
            .map_err(|e| format!("index.json is not an OCI index: {e}"))?;
        let mut top = one(index.manifests, "index.json")?;
        let mut tags: Vec<String> = ["io.containerd.image.name", "org.opencontainers.image.ref.name"]
            .iter()
            .filter_map(|k| top.annotations.get(*k).cloned())
            .take(1)
            .collect();
        if top.media_type.contains("index") {
            let nested: Index = serde_json::from_slice(&digest_blob(&mut blob, &top.digest)?)
                .map_err(|e| format!("{} is not an OCI index: {e}", top.digest))?;
            top = pick_platform(nested.manifests)?;
        }
        let manifest: ImageManifest = serde_json::from_slice(&digest_blob(&mut blob, &top.digest)?)
            .map_err(|e| format!("{} is not an OCI image manifest: {e}", top.digest))?;
        digest_blob(&mut blob, &manifest.config.digest)?;
        // An OCI ref name may be only the tag (`1.0`): keep it as `:1.0`.
        for tag in &mut tags {
            if !tag.contains(':') {
                *tag = format!(":{tag}");
            }
        }
        return Ok((manifest.config.digest, tags, Layout::Oci));
    }
    Err("neither manifest.json (docker save) nor index.json (OCI) in it: not an image archive".into())
}

/// Every regular file of the tar by normalised name ([`clean`]), with its data span. The names
/// ferry reads (manifest.json, index.json, a config, blobs) must be single regular files: a
/// second entry of the same name, or a link, could make `docker load` see other bytes than
/// the ones checked here (it extracts the last one, and follows links).
fn index<F: Read + Seek>(file: &mut F) -> Result<HashMap<String, Span>, String> {
    let mut archive = tar::Archive::new(&mut *file);
    let entries = archive.entries_with_seek().map_err(|e| format!("not a tar file: {e}"))?;
    let mut found = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("not a readable tar file: {e}"))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let name = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        if read_by_ferry(&name) {
            if !seen.insert(name.clone()) {
                return Err(format!("{name} is in it twice: not an archive docker save makes"));
            }
            if !kind.is_file() {
                return Err(format!("{name} is a link, not a file: not an archive docker save makes"));
            }
        }
        if !kind.is_file() {
            continue;
        }
        let span = Span { offset: entry.raw_file_position(), size: entry.size() };
        found.insert(name, span);
    }
    if found.is_empty() {
        return Err("not a tar file, or an empty one".into());
    }
    Ok(found)
}

/// Whether `name` (cleaned) is one ferry reads and checks: the manifests, a legacy config
/// (`<hex>.json` at the top), a blob. Layers elsewhere may be links (`docker save` of Docker 25
/// links the legacy `<id>/layer.tar` names to the blobs).
fn read_by_ferry(name: &str) -> bool {
    name == "manifest.json"
        || name == "index.json"
        || name.starts_with("blobs/")
        || (!name.contains('/') && name.ends_with(".json"))
}

/// A tar entry name as Go's `filepath.Clean` (what `docker load` uses) leaves it, relative:
/// no leading `/` or `./`, no empty or `.` parts, `..` resolved (never above the top).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// The bytes of entry `name` (at most [`JSON_LIMIT`]).
fn read_entry<F: Read + Seek>(
    file: &mut F,
    entries: &HashMap<String, Span>,
    name: &str,
) -> Result<Vec<u8>, String> {
    let span = entries.get(&clean(name)).ok_or_else(|| format!("{name} is not in it"))?;
    if span.size > JSON_LIMIT {
        return Err(format!("{name} is {} bytes, more than an image's metadata can be", span.size));
    }
    file.seek(SeekFrom::Start(span.offset)).map_err(|e| e.to_string())?;
    let mut data = Vec::with_capacity(usize::try_from(span.size).unwrap_or(0));
    file.take(span.size).read_to_end(&mut data).map_err(|e| e.to_string())?;
    if data.len() as u64 != span.size {
        return Err(format!("{name} is cut short (the file ends inside it)"));
    }
    Ok(data)
}

/// The blob `sha256:<hex>` under `blobs/sha256/`, checked against its digest.
fn digest_blob(
    blob: &mut impl FnMut(&str) -> Result<Vec<u8>, String>,
    digest: &str,
) -> Result<Vec<u8>, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| is_hex64(h))
        .ok_or_else(|| format!("digest \"{digest}\" is not sha256:<64 hex digits>"))?;
    let name = format!("blobs/sha256/{hex}");
    let data = blob(&name)?;
    verify(&data, hex, &name)?;
    Ok(data)
}

/// Exactly one image, else why not.
fn one<T>(mut items: Vec<T>, file: &str) -> Result<T, String> {
    match items.len() {
        1 => Ok(items.remove(0)),
        0 => Err(format!("{file} lists no image")),
        n => Err(format!("{file} lists {n} images; ferry deploys an archive of exactly one")),
    }
}

/// In a multi-platform index: linux/amd64, or the only entry.
fn pick_platform(manifests: Vec<Descriptor>) -> Result<Descriptor, String> {
    if manifests.len() == 1 {
        return one(manifests, "the image index");
    }
    let count = manifests.len();
    manifests
        .into_iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
        .ok_or_else(|| format!("the image index lists {count} platforms and none is linux/amd64"))
}

/// The hex of a config path: `<hex>.json` (legacy) or `blobs/sha256/<hex>`.
fn config_hex(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    is_hex64(hex).then(|| hex.to_string())
}

/// Whether `s` is 64 lower-case hex digits (a SHA-256 in an image reference).
fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 of `data` in lower-case hex.
fn hex_of(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// `data` hashes to `hex`, else the archive is damaged or forged.
fn verify(data: &[u8], hex: &str, name: &str) -> Result<(), String> {
    let actual = hex_of(data);
    if actual == hex {
        Ok(())
    } else {
        Err(format!(
            "{name} hashes to sha256:{actual}, not the sha256:{hex} its name says: the archive is damaged"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn sha(data: &[u8]) -> String {
        hex_of(data)
    }

    fn tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","config":{}}"#;

    fn legacy(config_name: &str, config: &[u8], images: usize) -> Vec<u8> {
        let one =
            format!(r#"{{"Config":"{config_name}","RepoTags":["p5/app:1.0"],"Layers":["l/layer.tar"]}}"#);
        let manifest = format!("[{}]", vec![one; images].join(","));
        tar(&[
            ("l/layer.tar", vec![7u8; 5000]),
            (config_name, config.to_vec()),
            ("manifest.json", manifest.into_bytes()),
        ])
    }

    fn inspect_bytes(data: Vec<u8>) -> Result<(String, Vec<String>, Layout), String> {
        inspect(&mut Cursor::new(data))
    }

    /// A tar with names written as given (the builder refuses `..` and a leading `/`); a
    /// `Some(target)` is a symbolic link.
    fn raw_tar(files: &[(&str, Vec<u8>, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data, link) in files {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_mode(0o644);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    header.set_cksum();
                    builder.append(&header, &[][..]).unwrap();
                }
                None => {
                    header.set_size(data.len() as u64);
                    header.set_cksum();
                    builder.append(&header, &data[..]).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn names_are_cleaned_as_docker_load_cleans_them() {
        assert_eq!(clean("/manifest.json"), "manifest.json");
        assert_eq!(clean("./a/../manifest.json"), "manifest.json");
        assert_eq!(clean("../../blobs//sha256/./x"), "blobs/sha256/x");
        let hex = sha(CONFIG);
        let manifest = format!(r#"[{{"Config":"{hex}.json","RepoTags":["p5/app:1.0"],"Layers":[]}}]"#);
        let odd = raw_tar(&[
            (&format!("/x/../{hex}.json"), CONFIG.to_vec(), None),
            ("./manifest.json", manifest.clone().into_bytes(), None),
        ]);
        assert_eq!(inspect_bytes(odd).unwrap().0, format!("sha256:{hex}"));
    }

    #[test]
    fn a_second_manifest_or_a_linked_config_is_refused() {
        let hex = sha(CONFIG);
        let config = format!("{hex}.json");
        let manifest = format!(r#"[{{"Config":"{config}","RepoTags":["p5/app:1.0"],"Layers":[]}}]"#);
        let twice = raw_tar(&[
            (&config, CONFIG.to_vec(), None),
            ("manifest.json", manifest.clone().into_bytes(), None),
            ("/manifest.json", b"[]".to_vec(), None),
        ]);
        assert_eq!(
            inspect_bytes(twice).unwrap_err(),
            "manifest.json is in it twice: not an archive docker save makes"
        );
        let linked = raw_tar(&[
            ("other.bin", CONFIG.to_vec(), None),
            (&config, Vec::new(), Some("other.bin")),
            ("manifest.json", manifest.into_bytes(), None),
        ]);
        assert_eq!(
            inspect_bytes(linked).unwrap_err(),
            format!("{config} is a link, not a file: not an archive docker save makes")
        );
        // A layer may be a link (Docker 25 links legacy layer names to blobs).
        let hex_layer = raw_tar(&[
            ("blobs/sha256/aa", vec![1], None),
            ("l/layer.tar", Vec::new(), Some("../blobs/sha256/aa")),
            (&config, CONFIG.to_vec(), None),
            (
                "manifest.json",
                format!(r#"[{{"Config":"{config}","RepoTags":[],"Layers":["l/layer.tar"]}}]"#).into_bytes(),
                None,
            ),
        ]);
        assert!(inspect_bytes(hex_layer).is_ok());
    }

    #[test]
    fn a_legacy_docker_save_gives_the_config_digest_and_tag() {
        let hex = sha(CONFIG);
        let got = inspect_bytes(legacy(&format!("{hex}.json"), CONFIG, 1)).unwrap();
        assert_eq!(got, (format!("sha256:{hex}"), vec!["p5/app:1.0".to_string()], Layout::Docker));
    }

    #[test]
    fn docker_25s_blobs_layout_is_read_through_manifest_json() {
        let hex = sha(CONFIG);
        let got = inspect_bytes(legacy(&format!("blobs/sha256/{hex}"), CONFIG, 1)).unwrap();
        assert_eq!(got.0, format!("sha256:{hex}"));
        assert_eq!(got.2, Layout::Docker);
    }

    #[test]
    fn an_oci_archive_goes_index_manifest_config() {
        let config_hex = sha(CONFIG);
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":1}},"layers":[]}}"#
        );
        let manifest_hex = sha(manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"1.0"}}}}]}}"#
        );
        let data = tar(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            (&format!("blobs/sha256/{config_hex}"), CONFIG.to_vec()),
            (&format!("blobs/sha256/{manifest_hex}"), manifest.into_bytes()),
            ("index.json", index.into_bytes()),
        ]);
        let got = inspect_bytes(data).unwrap();
        assert_eq!(got, (format!("sha256:{config_hex}"), vec![":1.0".to_string()], Layout::Oci));
    }

    /// A multi-platform index inside `index.json`: linux/amd64 is picked; without it, exit 2.
    #[test]
    fn a_nested_index_picks_linux_amd64() {
        let config_hex = sha(CONFIG);
        let manifest = format!(r#"{{"config":{{"digest":"sha256:{config_hex}"}},"layers":[]}}"#);
        let manifest_hex = sha(manifest.as_bytes());
        let other = "0".repeat(64);
        let nested = |arch: &str| {
            format!(
                r#"{{"manifests":[{{"digest":"sha256:{other}","platform":{{"os":"linux","architecture":"arm64"}}}},{{"digest":"sha256:{manifest_hex}","platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#
            )
        };
        for (arch, ok) in [("amd64", true), ("s390x", false)] {
            let nested = nested(arch);
            let nested_hex = sha(nested.as_bytes());
            let index = format!(
                r#"{{"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:{nested_hex}"}}]}}"#
            );
            let data = tar(&[
                (&format!("blobs/sha256/{config_hex}"), CONFIG.to_vec()),
                (&format!("blobs/sha256/{manifest_hex}"), manifest.clone().into_bytes()),
                (&format!("blobs/sha256/{nested_hex}"), nested.into_bytes()),
                ("index.json", index.into_bytes()),
            ]);
            match inspect_bytes(data) {
                Ok(got) => assert!(ok && got.0 == format!("sha256:{config_hex}"), "{arch}: {got:?}"),
                Err(e) => assert!(!ok && e.contains("none is linux/amd64"), "{arch}: {e}"),
            }
        }
    }

    #[test]
    fn two_images_are_refused() {
        let hex = sha(CONFIG);
        let err = inspect_bytes(legacy(&format!("{hex}.json"), CONFIG, 2)).unwrap_err();
        assert_eq!(err, "manifest.json lists 2 images; ferry deploys an archive of exactly one");
    }

    #[test]
    fn a_config_that_does_not_hash_to_its_name_is_refused() {
        let hex = sha(CONFIG);
        let err = inspect_bytes(legacy(&format!("{hex}.json"), b"{\"forged\":1}", 1)).unwrap_err();
        assert!(err.contains("the archive is damaged"), "{err}");
    }

    #[test]
    fn not_an_image_archive() {
        assert!(
            inspect_bytes(tar(&[("a.txt", b"x".to_vec())])).unwrap_err().contains("neither manifest.json")
        );
        assert!(inspect_bytes(b"plain text, not tar".to_vec()).is_err());
    }

    #[test]
    fn read_makes_it_an_input_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.tar");
        std::fs::write(&path, legacy(&format!("{}.json", sha(CONFIG)), CONFIG, 2)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("img.tar: manifest.json lists 2 images"), "{err}");
        let hex = sha(CONFIG);
        std::fs::write(&path, legacy(&format!("{hex}.json"), CONFIG, 1)).unwrap();
        let archive = read(&path).unwrap();
        assert_eq!((archive.tag(), archive.id.as_str()), (Some("1.0"), format!("sha256:{hex}").as_str()));
    }

    proptest! {
        /// Any bytes, and any damage to a valid archive: an answer, never a panic.
        #[test]
        fn no_input_panics(junk in proptest::collection::vec(any::<u8>(), 0..3000), at in 0usize..20000, byte in any::<u8>()) {
            let _ = inspect_bytes(junk);
            let mut valid = legacy(&format!("{}.json", sha(CONFIG)), CONFIG, 1);
            let i = at % valid.len();
            valid[i] = byte;
            let _ = inspect_bytes(valid.clone());
            valid.truncate(i);
            let _ = inspect_bytes(valid);
        }
    }
}
