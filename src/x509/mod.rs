//! X.509: self-signed certificates for signing keys, signed inside the HSM, and PKCS#7
//! bundles of them.

use std::str::FromStr as _;

use x509_cert::name::Name;

/// Parse an RFC 4514 distinguished name (`CN=Billing,O=Acme`).
///
/// # Errors
/// A sentence saying why it is not one.
pub fn parse_dn(dn: &str) -> Result<Name, String> {
    Name::from_str(dn).map_err(|e| format!("not a valid distinguished name ({e})"))
}
