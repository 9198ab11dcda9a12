//! JWKS wire types: what verifiers download.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

use super::b64;
use crate::keys::LiveKey;

/// One JWK for a published key: `kid kty alg use`, the key material, and `x5c`, `x5t`,
/// `x5t#S256` when the key has a certificate.
pub fn jwk(key: &LiveKey) -> Value {
    let mut m: Map<String, Value> = Map::new();
    m.insert("kid".into(), key.row.kid.to_string().into());
    m.extend(key.public.jwk_members());
    m.insert("alg".into(), key.row.algorithm.as_str().into());
    m.insert("use".into(), "sig".into());
    if let Some(cert) = &key.row.cert {
        m.insert(
            "x5c".into(),
            Value::Array(vec![STANDARD.encode(cert).into()]),
        );
        m.insert("x5t".into(), b64(&Sha1::digest(cert)).into());
        m.insert("x5t#S256".into(), b64(&Sha256::digest(cert)).into());
    }
    Value::Object(m)
}

/// The JWKS document of a set of keys (given newest first).
pub fn jwks(keys: &[std::sync::Arc<LiveKey>]) -> Value {
    serde_json::json!({ "keys": keys.iter().map(|k| jwk(k)).collect::<Vec<_>>() })
}
