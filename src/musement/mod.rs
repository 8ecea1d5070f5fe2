//! The Musement partner API client the reconciler polls with: `POST /login` (client
//! credentials, token cached until shortly before expiry) and `GET /orders/{uuid}`, parsed
//! leniently into a [`PolledOrder`] with personal data stripped.
//!
//! - [`client`]: [`MusementClient`] and its [`MusementSettings`]; logins, headers, retries on 401.
//! - [`model`]: [`PolledOrder`] / [`PolledItem`] and the personal-data allowlist.
//! - [`error`]: [`ApiError`], classified into transient and permanent failures.
//! - `headers`: parsing of `Date` and `Retry-After`.
//! - `base_url`: the one parse and check of `[musement] base_url` (config and client share it).

pub(crate) mod base_url;
pub mod client;
pub mod error;
pub(crate) mod headers;
pub mod model;

pub use client::{MusementClient, MusementSettings};
pub use error::ApiError;
pub use model::{PolledItem, PolledOrder};
