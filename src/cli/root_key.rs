//! `root-key rotate`, in direct or `--url` mode. The new key is shown once, where it cannot
//! end up in a log: on a terminal, as the JSON the caller asked for (`{"root_key": ...}`,
//! the shape of `POST /root-key/rotate`), or in a new 0600 file. Where it goes is settled
//! (the file created) before the old key is replaced.

use std::io::IsTerminal as _;

use reqwest::Method;
use serde_json::{Value, json};

use super::RootKeyCommand;
use super::apps::Target;
use super::output::Output;
use super::remote::{Cred, ROOT_KEY_ENV};
use crate::keys::registry::ROOT_SETTING;

/// `hsm-rotator root-key ...`.
pub(crate) async fn run(t: Target<'_>, cmd: RootKeyCommand, out: &Output) -> anyhow::Result<()> {
    let RootKeyCommand::Rotate { root_key_file } = cmd;
    let Some(path) = root_key_file.as_deref() else {
        if !out.json && !std::io::stdout().is_terminal() {
            anyhow::bail!(
                "stdout is not a terminal, so the new root key would land in a pipe or a log: \
                 pass --root-key-file FILE (written with mode 0600) or --json"
            );
        }
        let key = rotate(&t).await?;
        if out.json {
            return out.json(&json!({"root_key": key}));
        }
        println!("root key rotated; the old one no longer works");
        super::announce_root_key(&crate::auth::Secret::from_string(key))?;
        return stale_env_note(&t);
    };
    let file = super::create_private_file(path)?;
    let key = match rotate(&t).await {
        Ok(k) => k,
        Err(e) => {
            // Nothing was rotated: leave no empty key file behind.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    super::fill_private_file(file, path, &format!("{key}\n"))?;
    if out.json {
        out.json(&json!({"rotated": true, "root_key_file": path}))
    } else {
        println!(
            "root key rotated; the new one is in {} (mode 0600; only its SHA-256 is kept)",
            path.display()
        );
        stale_env_note(&t)
    }
}

/// Replace the root key; returns the new one.
async fn rotate(t: &Target<'_>) -> anyhow::Result<String> {
    match t {
        Target::Remote(r) => {
            let v = r
                .call(Method::POST, "/root-key/rotate", Cred::Root, None)
                .await?;
            v.get("root_key")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("the server's answer holds no root key"))
        }
        Target::Direct(d) => {
            let keys = &d.state().keys;
            let old = keys.store().setting(ROOT_SETTING).await?.ok_or_else(|| {
                anyhow::anyhow!("the store has no root key; create it with `hsm-rotator init`")
            })?;
            let new = keys
                .rotate_root_key(&old)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(new.expose().to_owned())
        }
    }
}

/// After a rotation over `--url`, the key in the environment is the old one.
fn stale_env_note(t: &Target<'_>) -> anyhow::Result<()> {
    if matches!(t, Target::Remote(_)) {
        println!("(set {ROOT_KEY_ENV} to the new key for further --url commands)");
    }
    Ok(())
}
