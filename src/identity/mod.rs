//! End-user identity (DESIGN.md, "End-user identity, group rules, policy
//! as code"): which person a request is for, from a token issued by the
//! customer's own identity provider (or the portal), verified by the agent
//! itself against the issuer's published keys.
//!
//! - [`config`]: `[identity]` and the routes' `users`, `groups`,
//!   `identity`, `forward_identity` and `policy`.
//! - [`jwks`]: the issuer's keys, each bound to the algorithms it allows.
//! - [`fetch`]: the JWKS document fetched by the agent itself.
//! - [`keys`]: the keys kept fresh, and the [`keys::Verifier`] with its
//!   cache of verified tokens.
//! - [`verify`]: a token checked against those keys and `[identity]`'s
//!   rules, giving a [`verify::User`].
//! - [`headers`]: the token header and `Impersonate-*` removed, claims
//!   admitted into `${{ user.… }}`.
//!
//! The request path is in `crate::dispatch` (`access`): route rules, then
//! users and groups, then the route's policy ([`crate::rego`]).

pub mod config;
pub mod fetch;
pub mod headers;
pub mod jwks;
pub mod keys;
pub mod verify;

/// The verified end user of a request, carried from the route's checks to
/// the upstream call (header placeholders, audit) as a request extension.
#[derive(Debug, Clone)]
pub struct Verified(pub std::sync::Arc<verify::User>);

#[cfg(test)]
mod tests;
