//! End-user identity (DESIGN.md, "End-user identity, group rules, policy
//! as code"): which person a request is for, from a token issued by the
//! customer's own identity provider (or the portal), verified by the agent
//! itself against the issuer's published keys.
//!
//! - [`jwks`]: the issuer's keys, each bound to the algorithms it allows.
//! - [`verify`]: a token checked against those keys and `[identity]`'s
//!   rules, giving a [`verify::User`].
//!
//! Not wired into request handling yet: the `[identity]` configuration,
//! the JWKS fetch and refresh, route `users`/`groups` and the header
//! placeholders come next (issue 19).

pub mod jwks;
pub mod verify;

#[cfg(test)]
mod tests;
