//! Entity contracts declared in files, not coded: the fields of each schema version,
//! how each version upcasts from the one before, and which versions are published.
//!
//! A contract is a TOML file under `contracts/entities/` (see `docs/entities.md` for
//! the format). [`Contract::parse`] reads one and refuses, with one line that names the
//! file, the line and the key, anything that would break a reader:
//!
//! - a type this crate does not know, a field name that is not a plain identifier;
//! - a key field that is missing, optional or not a string or decimal;
//! - versions that are not numbered 1, 2, 3, … in order;
//! - a version that does not upcast from the one before (a new required field with no
//!   default, a field that changes type, a field that disappears without `drop`);
//! - a published version whose declaration changed ([`Published`], the lock file).
//!
//! This module is pure, but for [`load_contract`], which reads the contract a mapping
//! names: it parses text, so every refusal has a unit test.

mod data;
mod error;
mod event;
mod lock;
mod mapping;
mod model;
mod schema;
mod upcast;

pub use data::{DataError, fits, kind, validate};
pub use error::DeclarationError;
pub use event::{Event, decode, encode, key_in};
pub use lock::Published;
pub use mapping::{
    FieldEntry, MappingError, field_entries, load_contract, load_mapping, mapping_contract,
};
pub use model::{Contract, Field, FieldType, Version};
pub use schema::{render_schema, shape_of_schema, shape_of_version};
pub use upcast::{Step, put as put_path};

#[cfg(test)]
mod tests;
