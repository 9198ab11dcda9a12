//! `hsm-rotator config check`: validate the configuration, then try every step the server
//! takes at start-up (load the PKCS#11 module, find the token, log in, find the mechanisms
//! of the algorithms in use, open the store and compare its schema), without changing
//! anything. Each check prints `ok` or `FAILED` with a reason in plain words; a check that
//! depends on a failed one is `skipped`. The PIN is used for `C_Login` and never printed.

use std::path::Path;

use serde_json::{Value, json};

use super::output::Output;
use crate::alg::Algorithm;
use crate::config::{Config, redact_url};
use crate::hsm::diagnose::{self, Probe};
use crate::store::Store;

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// Works, but probably not as meant; does not fail the check run.
    Warning,
    Failed,
    Skipped,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "WARNING",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Default)]
struct Report(Vec<(&'static str, Status, String)>);

impl Report {
    fn push(&mut self, name: &'static str, r: Result<String, String>) {
        match r {
            Ok(d) => self.0.push((name, Status::Ok, d)),
            Err(d) => self.0.push((name, Status::Failed, d)),
        }
    }

    fn step(&mut self, name: &'static str, step: Option<Result<String, String>>, needs: &str) {
        match step {
            Some(r) => self.push(name, r),
            None => self.skip(name, needs),
        }
    }

    fn skip(&mut self, name: &'static str, needs: &str) {
        self.0
            .push((name, Status::Skipped, format!("needs {needs} first")));
    }

    fn failed(&self) -> usize {
        self.0.iter().filter(|c| c.1 == Status::Failed).count()
    }
}

fn pin_source(cfg: &Config) -> String {
    if std::env::var_os("HSM_ROTATOR_PIN").is_some() {
        "PIN from HSM_ROTATOR_PIN".into()
    } else if let Some(f) = &cfg.pin_file {
        format!("PIN from {} (owner-only)", f.display())
    } else {
        "PIN from the config file's pin key (prefer pin_file)".into()
    }
}

fn mechanisms_check(probe: &Probe, in_use: Option<&[String]>) -> Option<Result<String, String>> {
    let supported = match probe.supported.as_ref()? {
        Ok(s) => s,
        Err(e) => return Some(Err(e.clone())),
    };
    // New apps default to RS256; existing apps need their own algorithm.
    let mut needed = vec![Algorithm::RS256];
    for a in in_use.unwrap_or_default() {
        if let Ok(a) = a.parse::<Algorithm>()
            && !needed.contains(&a)
        {
            needed.push(a);
        }
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|a| !supported.contains(a))
        .map(|a| a.as_str())
        .collect();
    let offered: Vec<&str> = supported.iter().map(|a| a.as_str()).collect();
    let lacking: Vec<&str> = crate::alg::ALL
        .iter()
        .filter(|a| !supported.contains(a))
        .map(|a| a.as_str())
        .collect();
    Some(if missing.is_empty() {
        Ok(format!(
            "the token offers {}{}",
            offered.join(" "),
            if lacking.is_empty() {
                String::new()
            } else {
                format!(" (not {}: apps cannot use them here)", lacking.join(" "))
            }
        ))
    } else {
        Err(format!(
            "the token lacks the key-generation or signing mechanism of {} (in use or the default); it offers {}",
            missing.join(" "),
            if offered.is_empty() {
                "none".into()
            } else {
                offered.join(" ")
            }
        ))
    })
}

fn schema_words(s: &crate::store::SchemaStatus) -> Result<String, String> {
    if !s.unknown.is_empty() {
        return Err(format!(
            "the store has migrations this binary does not know ({:?}): it was written by a newer hsm-rotator",
            s.unknown
        ));
    }
    if !s.modified.is_empty() {
        return Err(format!(
            "applied migrations {:?} differ from this binary's: the migration files were edited",
            s.modified
        ));
    }
    if !s.pending.is_empty() {
        return Err(format!(
            "{} of {} migrations not applied yet ({}): run `hsm-rotator init` or start the server once",
            s.pending.len(),
            s.known,
            s.pending.join(", ")
        ));
    }
    Ok(format!("schema current ({} migrations)", s.known))
}

/// Run every check and print the report.
///
/// # Errors
/// If any check failed (after printing them all).
pub(crate) async fn run(path: Option<&Path>, out: &Output) -> anyhow::Result<()> {
    let mut r = Report::default();
    let source = path.map_or_else(
        || "no file: defaults and HSM_ROTATOR_* environment".to_owned(),
        |p| p.display().to_string(),
    );
    let cfg = match Config::load(path) {
        Ok(c) => {
            r.push("config", Ok(format!("{source}: valid")));
            Some(c)
        }
        Err(e) => {
            r.push("config", Err(e.to_string()));
            None
        }
    };
    if let Some(cfg) = &cfg {
        let base = crate::app::configured_issuers(cfg, &cfg.listen);
        match crate::app::issuer_warning(cfg, None) {
            Some(w) => r.0.push(("issuer", Status::Warning, w)),
            None => r.push(
                "issuer",
                Ok(format!(
                    "tokens name {}/apps/<id> (public_url, else the listen address)",
                    base.base()
                )),
            ),
        }
        let pin = match cfg.pin() {
            Ok(p) => {
                r.push("pin", Ok(pin_source(cfg)));
                Some(p)
            }
            Err(e) => {
                r.push("pin", Err(e.to_string()));
                None
            }
        };
        let url = cfg.database_url();
        let schema = Store::inspect(&url).await;
        let module = cfg.pkcs11_module.clone();
        let label = cfg.token_label.clone();
        let probe =
            tokio::task::spawn_blocking(move || diagnose::probe(&module, &label, pin.as_ref()))
                .await
                .unwrap_or_default();
        r.step("pkcs11 module", probe.module.clone(), "a configuration");
        r.step("token", probe.token.clone(), "the module");
        r.step("login", probe.login.clone(), "the token");
        let in_use = schema.as_ref().ok().map(|s| s.algorithms.as_slice());
        r.step("mechanisms", mechanisms_check(&probe, in_use), "the token");
        r.push(
            "store",
            match &schema {
                Ok(s) => schema_words(s).map(|w| format!("{}: {w}", redact_url(&url))),
                Err(e) => Err(format!("cannot open {}: {e}", redact_url(&url))),
            },
        );
    } else {
        for name in [
            "issuer",
            "pin",
            "pkcs11 module",
            "token",
            "login",
            "mechanisms",
            "store",
        ] {
            r.skip(name, "a valid configuration");
        }
    }
    let failed = r.failed();
    if out.json {
        let checks: Vec<Value> =
            r.0.iter()
                .map(|(n, st, d)| json!({"name": n, "status": st.word(), "detail": d}))
                .collect();
        out.json(&json!({"ok": failed == 0, "checks": checks}))?;
    } else {
        for (n, st, d) in &r.0 {
            println!("{n:<14} {:<7} {d}", st.word());
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    if !out.json {
        println!("all checks passed");
    }
    Ok(())
}
