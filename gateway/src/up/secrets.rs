//! The secrets `up` makes and keeps in its data dir (the admin token, the callback secret):
//! read back when still usable, else made anew, written readable by this user only.

use std::path::Path;

use anyhow::Context;
use tracing::warn;

/// The admin token's file in the data dir.
pub(super) const TOKEN_FILE: &str = "admin-token";
/// The callback secret's file in the data dir.
pub(super) const CALLBACK_SECRET_FILE: &str = "callback-secret";

/// Secrets `up` made itself: the banner shows these, and only these.
#[derive(Default)]
pub(super) struct Generated {
    pub(super) admin_token: Option<String>,
    pub(super) callback_secret: Option<String>,
}

/// The secret kept in `path`, when it holds one that `valid` accepts; else a new one from
/// `generate`, written there first (mode 0600: only this user reads it).
pub(super) fn kept_secret(
    path: &Path,
    valid: impl Fn(&str) -> bool,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept = text.trim();
        if valid(kept) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
            return Ok(kept.to_owned());
        }
        warn!(file = %path.display(), "kept secret unusable, making a new one");
    }
    let secret = generate();
    write_secret(path, &secret)?;
    Ok(secret)
}

/// Writes `secret` to `path`, readable by this user only (mode 0600).
pub(super) fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
