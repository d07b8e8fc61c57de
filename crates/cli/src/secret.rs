//! The JWT signing secret: given by flag/env, or generated once and kept in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

/// The file in the data directory that holds a generated secret (hex, owner-only).
pub const SECRET_FILE: &str = "jwt-secret";

pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRET_FILE)
}

/// Reads the secret kept in `data_dir`, if there is one.
pub fn read_secret(data_dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let path = secret_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().as_bytes().to_vec())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads the kept secret or generates one (32 random bytes, hex) and keeps it.
pub fn load_or_generate(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = read_secret(data_dir)? {
        return Ok(secret);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = secret_path(data_dir);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "no --jwt-secret given: generated one and kept it in the data directory");
    Ok(hex.into_bytes())
}
