//! The compatibility families, one module each, as their peers' clients call them; and
//! [`answers`], which records every family's answers to a fixed script against a golden file.

mod answers;
mod auth0;
pub(crate) mod jwtplus;
mod pocketpaw;
