//! luod's settings: built-in defaults, overridden by the TOML config file, overridden by the
//! environment and the command line.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The config file (`--config`, `LUOD_CONFIG`). Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// Socket permissions, as an octal string ("0600").
    pub socket_mode: Option<String>,
    /// Where to serve metrics (`--metrics`): `127.0.0.1:PORT`, `[::1]:PORT` or `unix:/PATH`.
    pub metrics: Option<String>,
    /// Per-uid quotas.
    #[serde(default)]
    pub limits: FileLimits,
}

/// `[limits]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Most sessions per uid.
    pub sessions: Option<u64>,
    /// Most preserved files per uid.
    pub files: Option<u64>,
    /// Most preserved bytes per uid.
    pub bytes: Option<u64>,
    /// Most of luod's descriptors per uid other than root and luod's own.
    pub fds: Option<u64>,
    /// luod's descriptors only root and luod's own uid may use.
    pub fd_reserve: Option<u64>,
}

impl FileConfig {
    /// Reads and parses `path`; unknown keys are errors.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("Invalid config file {}", path.display()))
    }
}

/// Parses an octal permission string such as "0600".
pub fn parse_mode(s: &str) -> anyhow::Result<u32> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .with_context(|| format!("Invalid socket mode {s:?}: expected octal such as 0600"))?;
    anyhow::ensure!(mode <= 0o777, "Invalid socket mode {s:?}: more than 0777");
    Ok(mode)
}
