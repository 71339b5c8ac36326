//! The vocabulary every domain module shares, and that no face owns: who is calling ([`Principal`]), what
//! went wrong ([`DomainError`]) and a JSON field validator ([`Fields`]). The JSON API maps a
//! [`DomainError`] to problem+json (`http/error.rs`); another face (the dashboard) maps it its own way.

mod error;
mod fields;
mod principal;

pub use error::{DomainError, ErrorKind, FieldError};
pub use fields::Fields;
pub use principal::{Credential, Principal, SCOPES};
