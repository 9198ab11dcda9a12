//! JWTPlus's body validation: its JSON error shapes and its per-field sentences, collected
//! in the order of the fields.

use std::net::IpAddr;

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use super::errors::JpError;
use crate::keys::policy;

/// Parse a JSON object body with JWTPlus's error shapes.
pub(super) fn body_object(body: &Bytes) -> Result<Map<String, Value>, JpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JpError::Empty);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(JpError::Syntax("invalid json data type")),
        Err(_) => Err(JpError::Syntax("invalid json format")),
    }
}

const REQUIRED: &str = "This field is required.";
const ALPHA: &str = "This field accepts alpha, numbers & spaces only.";
pub(super) const ONEOF: &str = "This field accepts preconfigured values only.";
const NUMBER: &str = "This field accepts the numbers only.";

/// Collects validation failures in the order of the fields.
#[derive(Default)]
pub(super) struct Check(Vec<(String, String)>);

impl Check {
    pub(super) fn fail(&mut self, f: &str, m: impl Into<String>) {
        self.0.push((f.to_owned(), m.into()));
    }

    /// A string field (type errors are a 400 "invalid json data type").
    pub(super) fn string(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
    ) -> Result<Option<String>, JpError> {
        match m.get(f) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(f, REQUIRED);
                }
                Ok(None)
            }
            Some(Value::String(s)) if s.is_empty() && required => {
                self.fail(f, REQUIRED);
                Ok(None)
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(JpError::Syntax("invalid json data type")),
        }
    }

    fn alpha(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
    ) -> Result<Option<String>, JpError> {
        let v = self.string(m, f, required)?;
        if let Some(s) = &v
            && !s.is_empty()
            && !s.chars().all(|c| {
                c.is_ascii_alphanumeric() || "@._- ".contains(c) || c.is_ascii_whitespace()
            })
        {
            self.fail(f, ALPHA);
        }
        Ok(v)
    }

    fn int(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
        required: bool,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, JpError> {
        match m.get(f) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(f, REQUIRED);
                }
                Ok(None)
            }
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v < min => {
                    self.fail(f, format!("This field accepts the minimum value of {min}"));
                    Ok(None)
                }
                Some(v) if v > max => {
                    self.fail(f, format!("This field accepts the maximum value of {max}"));
                    Ok(None)
                }
                Some(v) => Ok(Some(v)),
                None => {
                    self.fail(f, NUMBER);
                    Ok(None)
                }
            },
            Some(_) => Err(JpError::Syntax("invalid json data type")),
        }
    }

    /// A required string field that must look like a JWT (`token`, `refresh_token`).
    pub(super) fn jwt(
        &mut self,
        m: &Map<String, Value>,
        f: &str,
    ) -> Result<Option<String>, JpError> {
        let v = self.string(m, f, true)?;
        if let Some(t) = &v
            && !is_jwt(t)
        {
            self.fail(f, "This field requires a valid jwt token.");
        }
        Ok(v)
    }

    pub(super) fn done(self) -> Result<(), JpError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(JpError::Invalid(self.0))
        }
    }
}

const YEAR: i64 = policy::MAX_SECONDS;

/// The policy fields shared by create and PATCH.
pub(super) struct PolicyFields {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) token_expire: i64,
    pub(super) token_notbefore: i64,
    pub(super) refresh_expire: i64,
    pub(super) refresh_notbefore: i64,
    pub(super) rotation_period: i64,
}

pub(super) fn policy_fields(
    m: &Map<String, Value>,
    c: &mut Check,
) -> Result<Option<PolicyFields>, JpError> {
    let name = c.alpha(m, "name", true)?;
    let description = c.alpha(m, "description", false)?;
    let token_expire = c.int(m, "token_expire", true, 60, YEAR)?;
    let token_notbefore = c.int(m, "token_notbefore", false, 0, YEAR)?;
    let refresh_expire = c.int(m, "refresh_expire", true, 60, YEAR)?;
    let refresh_notbefore = c.int(m, "refresh_notbefore", true, 0, YEAR)?;
    let rotation_period = c.int(m, "rotation_period", true, 60, YEAR)?;
    Ok(
        match (
            name,
            token_expire,
            refresh_expire,
            refresh_notbefore,
            rotation_period,
        ) {
            (Some(name), Some(te), Some(re), Some(rn), Some(rp)) => Some(PolicyFields {
                name,
                description: description.unwrap_or_default(),
                token_expire: te,
                token_notbefore: token_notbefore.unwrap_or(0),
                refresh_expire: re,
                refresh_notbefore: rn,
                rotation_period: rp,
            }),
            _ => None,
        },
    )
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `ip` and `useragent`, required by sign and renew.
pub(super) fn client_meta(m: &Map<String, Value>, c: &mut Check) -> Result<Option<Value>, JpError> {
    let ip = c.string(m, "ip", true)?;
    if let Some(ip) = &ip
        && ip.parse::<IpAddr>().is_err()
    {
        c.fail("ip", "This field requires a valid ipv4 or ipv6 address.");
    }
    let ua = c.string(m, "useragent", true)?;
    Ok(match (ip, ua) {
        (Some(ip), Some(ua)) => {
            Some(json!({"ip": ip, "useragent": ua.chars().take(255).collect::<String>()}))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::is_jwt;

    #[test]
    fn jwt_shape_check() {
        assert!(is_jwt("eyJh.eyJz.sig"));
        assert!(!is_jwt("a.b"));
        assert!(!is_jwt("a b.c.d"));
    }
}
