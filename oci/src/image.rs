//! Writing an OCI image tarball that `ctr image import` takes as is: an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`) with one
//! manifest, a config whose entrypoint names the module, and one plain
//! (uncompressed) tar layer holding the module at `/<file name>`.
//!
//! The image's platform is the host's (`linux/<arch>`), so containerd
//! unpacks it without `--platform`; the wasmlet runtime, not the platform,
//! decides that it runs as wasm. The name is recorded both as
//! `io.containerd.image.name` (the full reference, which containerd uses
//! as the image name) and as `org.opencontainers.image.ref.name`.

use crate::Error;
use crate::error::io;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Media type of the plain tar layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// runwasi's media type of a layer that is a wasm binary itself (a
/// component or a core module), not a tar.
pub const WASM_LAYER_MEDIA_TYPE: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// The W3C wasm module layer media type, which some tools write instead.
pub const WASM_MODULE_LAYER_MEDIA_TYPE: &str = "application/vnd.w3c.wasm.module.v1+wasm";
/// Where a wasm layer's binary lands in the rootfs once containerd's
/// stream processor (`wasmlet oci wasm-layer`, see [`wasm_layer_tar`]) has
/// turned it into a tar; the entrypoint of images with such a layer.
pub const WASM_LAYER_FILE: &str = "module.wasm";
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Largest module put into an image (a layer is held in memory).
pub const MAX_MODULE_SIZE: u64 = 1 << 30;

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The image reference, e.g. `docker.io/library/hello:latest`.
    pub name: String,
    /// The file name the module gets at the root of the image.
    pub file_name: String,
    /// The module's bytes.
    pub module: Vec<u8>,
    /// Annotations of the manifest, also set as the config's labels.
    pub annotations: BTreeMap<String, String>,
    /// Store the module as a raw wasm layer ([`WASM_LAYER_MEDIA_TYPE`],
    /// runwasi's form) instead of a tar: containerd then needs the stream
    /// processor `wasmlet oci wasm-layer` to unpack it, and the module is
    /// `/`[`WASM_LAYER_FILE`] whatever its file name.
    pub wasm_layer: bool,
    /// The user the task runs as, numeric `UID:GID` (the config's `User`,
    /// Dockerfile's `USER`): containerd puts it in the runtime spec, and
    /// the shim runs a sandboxed task's worker as that host user.
    pub user: Option<String>,
}

/// The digests of what was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// `sha256:...` of the manifest.
    pub manifest: String,
}

/// The OCI architecture name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes the image tarball to `out` (through a temporary file renamed
/// into place).
pub fn write_image(spec: &ImageSpec, out: &Path) -> Result<Written, Error> {
    if spec.name.is_empty() || spec.name.chars().any(|c| c.is_whitespace()) {
        return Err(Error::Invalid(format!(
            "image name {:?} is not a reference (like `example.com/hello:v1`)",
            spec.name
        )));
    }
    if spec.file_name.is_empty() || spec.file_name.contains('/') || spec.file_name == ".." {
        return Err(Error::Invalid(format!(
            "module file name {:?} must be a plain name",
            spec.file_name
        )));
    }
    let ours: BTreeMap<&str, &str> = spec
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with(crate::bundle::ANNOTATION_PREFIX))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let ours = (!ours.is_empty()).then(|| serde_json::to_vec(&ours).expect("JSON of strings"));
    // Each layer: its blob, media type and diff id (the digest of the tar
    // containerd unpacks, after a stream processor if there is one).
    let mut layers: Vec<(Vec<u8>, &str, String)> = Vec::new();
    let entry_name = if spec.wasm_layer {
        layers.push((
            spec.module.clone(),
            WASM_LAYER_MEDIA_TYPE,
            digest(&wasm_layer_tar(&spec.module)?),
        ));
        if let Some(json) = &ours {
            let tar = annotations_tar(json)?;
            let d = digest(&tar);
            layers.push((tar, LAYER_MEDIA_TYPE, d));
        }
        WASM_LAYER_FILE
    } else {
        let tar = layer_tar(&spec.file_name, &spec.module, ours.as_deref())?;
        let d = digest(&tar);
        layers.push((tar, LAYER_MEDIA_TYPE, d));
        &spec.file_name
    };
    let diff_ids: Vec<&str> = layers.iter().map(|(_, _, d)| d.as_str()).collect();
    let labels: Value = spec.annotations.clone().into_iter().collect();
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{entry_name}")],
            "WorkingDir": "/",
            "Labels": labels,
            "User": spec.user.clone().unwrap_or_default(),
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).expect("JSON of plain values");
    let mut annotations: BTreeMap<String, String> = spec.annotations.clone();
    annotations.insert(
        "org.opencontainers.image.title".into(),
        spec.file_name.clone(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": layers.iter().map(|(blob, media_type, _)| descriptor(media_type, blob)).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    let manifest = serde_json::to_vec(&manifest).expect("JSON of plain values");
    let tag = spec
        .name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let mut index_entry = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    index_entry["platform"] = json!({ "architecture": host_arch(), "os": "linux" });
    index_entry["annotations"] = json!({
        "io.containerd.image.name": spec.name,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = json!({ "schemaVersion": 2, "manifests": [index_entry] });
    let index = serde_json::to_vec(&index).expect("JSON of plain values");

    let tmp = out.with_extension("tar.tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let result = (|| -> std::io::Result<()> {
        append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append(&mut tar, "index.json", &index)?;
        let blobs = layers.iter().map(|(b, _, _)| b).chain([&config, &manifest]);
        for blob in blobs {
            let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
            append(&mut tar, &name, blob)?;
        }
        tar.into_inner()?.flush()
    })();
    if let Err(e) = result.and_then(|_| std::fs::rename(&tmp, out)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io {
            path: out.to_path_buf(),
            source: e,
        });
    }
    Ok(Written {
        manifest: digest(&manifest),
    })
}

/// The layer: the module, one regular file, mode 0755 (so a runtime that
/// checks for an executable entrypoint accepts it), owned by root; and the
/// `wasmlet.io/` annotations at [`crate::bundle::IMAGE_ANNOTATIONS_PATH`]
/// if there are any.
fn layer_tar(name: &str, module: &[u8], annotations: Option<&[u8]>) -> Result<Vec<u8>, Error> {
    let mut tar = tar::Builder::new(Vec::new());
    let result = (|| {
        let mut header = tar::Header::new_gnu();
        header.set_size(module.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, module)?;
        if let Some(json) = annotations {
            append_annotations(&mut tar, json)?;
        }
        tar.into_inner()
    })();
    result.map_err(|e| Error::Invalid(format!("building the layer: {e}")))
}

/// What the stream processor `wasmlet oci wasm-layer` makes of a raw wasm
/// layer: a tar holding it as `/`[`WASM_LAYER_FILE`]. Deterministic (fixed
/// owner, mode and time), so an image can name its digest as the layer's
/// diff id, which containerd checks after unpacking.
pub fn wasm_layer_tar(module: &[u8]) -> Result<Vec<u8>, Error> {
    layer_tar(WASM_LAYER_FILE, module, None)
}

/// A layer holding only the `wasmlet.io/` annotations file (next to a raw
/// wasm layer, which cannot hold it).
fn annotations_tar(json: &[u8]) -> Result<Vec<u8>, Error> {
    let mut tar = tar::Builder::new(Vec::new());
    let result = (|| {
        append_annotations(&mut tar, json)?;
        tar.into_inner()
    })();
    result.map_err(|e| Error::Invalid(format!("building the layer: {e}")))
}

/// The annotations file and its directory.
fn append_annotations<W: Write>(tar: &mut tar::Builder<W>, json: &[u8]) -> std::io::Result<()> {
    let path = crate::bundle::IMAGE_ANNOTATIONS_PATH.trim_start_matches('/');
    let mut dir = tar::Header::new_gnu();
    dir.set_size(0);
    dir.set_mode(0o755);
    dir.set_mtime(0);
    dir.set_entry_type(tar::EntryType::Directory);
    let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
    tar.append_data(&mut dir, format!("{parent}/"), &[][..])?;
    append(tar, path, json)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A hello image (annotated `wasmlet.io/snapshot=true`) written to a
    /// temporary directory: the directory, the spec, what was written and
    /// the tarball's files.
    fn write_test_image(
        wasm_layer: bool,
    ) -> (
        tempfile::TempDir,
        ImageSpec,
        Written,
        BTreeMap<String, Vec<u8>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        let spec = ImageSpec {
            name: "example.com/hello:v1".into(),
            file_name: "hello.wasm".into(),
            module: b"\0asm\x01\0\0\0".to_vec(),
            annotations: [("wasmlet.io/snapshot".to_string(), "true".to_string())].into(),
            wasm_layer,
            user: None,
        };
        let written = write_image(&spec, &out).unwrap();
        let files = read_tar(&out);
        (dir, spec, written, files)
    }

    /// The files of an image tarball, by name.
    fn read_tar(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        files
    }

    #[test]
    fn writes_a_consistent_layout() {
        let (dir, spec, written, files) = write_test_image(false);
        // Every blob is stored under its own digest.
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(data), format!("sha256:{hex}"));
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], written.manifest.as_str());
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "example.com/hello:v1"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        let hex = &written.manifest["sha256:".len()..];
        let manifest: Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap();
        assert_eq!(manifest["annotations"]["wasmlet.io/snapshot"], "true");
        let config_hex =
            manifest["config"]["digest"].as_str().unwrap()["sha256:".len()..].to_string();
        let config: Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{config_hex}")]).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/hello.wasm");
        let layer_hex =
            manifest["layers"][0]["digest"].as_str().unwrap()["sha256:".len()..].to_string();
        let layer = &files[&format!("blobs/sha256/{layer_hex}")];
        let mut layer_archive = tar::Archive::new(&layer[..]);
        let mut entries = layer_archive.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("hello.wasm"));
        let mut module = Vec::new();
        e.read_to_end(&mut module).unwrap();
        assert_eq!(module, spec.module);
        // The wasmlet.io/ annotations, where the shim finds them.
        let mut found = None;
        for e in entries {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some(".wasmlet/annotations.json") {
                let mut text = String::new();
                e.read_to_string(&mut text).unwrap();
                found = Some(text);
            }
        }
        assert_eq!(found.as_deref(), Some(r#"{"wasmlet.io/snapshot":"true"}"#));
        assert!(!dir.path().join("img.tar.tmp").exists());
    }

    #[test]
    fn a_wasm_layer_image_names_the_processors_tar_as_its_diff_id() {
        let (_dir, spec, written, files) = write_test_image(true);
        let blob =
            |d: &Value| files[&format!("blobs/sha256/{}", &d.as_str().unwrap()[7..])].clone();
        let manifest: Value =
            serde_json::from_slice(&blob(&Value::from(written.manifest))).unwrap();
        let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], WASM_LAYER_MEDIA_TYPE);
        assert_eq!(blob(&manifest["layers"][0]["digest"]), spec.module);
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            digest(&wasm_layer_tar(&spec.module).unwrap()).as_str()
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/module.wasm");
        // The annotations ride in a plain tar layer of their own.
        assert_eq!(manifest["layers"][1]["mediaType"], LAYER_MEDIA_TYPE);
        let second = blob(&manifest["layers"][1]["digest"]);
        assert_eq!(config["rootfs"]["diff_ids"][1], digest(&second).as_str());
    }

    #[test]
    fn refuses_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ImageSpec {
            name: "bad name".into(),
            file_name: "m.wasm".into(),
            module: vec![],
            annotations: BTreeMap::new(),
            wasm_layer: false,
            user: None,
        };
        assert!(write_image(&spec, &dir.path().join("a.tar")).is_err());
        spec.name = "ok".into();
        spec.file_name = "a/b".into();
        assert!(write_image(&spec, &dir.path().join("a.tar")).is_err());
    }
}
