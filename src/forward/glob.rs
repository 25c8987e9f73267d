//! Which domains a forward glob (`*.DOMAIN`) may cover.
//!
//! A glob over a public suffix admits every customer of a registry or
//! hosting platform: `*.com`, `*.co.uk`, `*.github.io`. Those are refused
//! by the public suffix list (Mozilla's, embedded by the `psl` crate),
//! not by counting labels: `*.co.uk` has two labels and is as broad as
//! `*.com`, while `*.internal` has one and names only the customer's own
//! network.
//!
//! By the list's own algorithm every unknown top-level domain is a
//! public suffix too (its default rule `*`), so a glob over a single
//! unknown label is refused as well, except for the names set aside for
//! private networks, allowed explicitly ([`PRIVATE_USE`]).

/// Domains for private networks, never delegated in the public DNS:
/// `internal` (ICANN, 2024), `home.arpa` (RFC 8375), `local` (RFC 6762,
/// multicast DNS) and the names RFC 6762 appendix G lists as in private
/// use (`intranet`, `private`, `corp`, `home`, `lan`).
pub(super) const PRIVATE_USE: &[&str] = &[
    "internal",
    "home.arpa",
    "local",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
];

/// Whether `*.{domain}` is narrow enough: `domain` (lower case, no
/// trailing dot) is a private-use name, or anything below a public suffix.
pub(super) fn narrow_enough(domain: &str) -> Result<(), String> {
    if PRIVATE_USE.contains(&domain) {
        return Ok(());
    }
    let is_suffix =
        psl::suffix(domain.as_bytes()).is_some_and(|s| s.as_bytes() == domain.as_bytes());
    if !is_suffix {
        return Ok(());
    }
    Err(format!(
        "{domain} is a public suffix (or an unknown top-level domain): the glob would admit \
         every domain registered under it; name your own domain (`*.example.{domain}`), or use \
         a private-use name ({})",
        PRIVATE_USE.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::narrow_enough;

    #[test]
    fn public_suffixes_are_refused_private_use_names_allowed() {
        for ok in [
            "internal",
            "corp.internal",
            "corp",
            "local",
            "lan",
            "home.arpa",
            "example.com",
            "example.co.uk",
            "me.github.io",
        ] {
            assert!(narrow_enough(ok).is_ok(), "{ok}");
        }
        for too_broad in ["com", "co.uk", "github.io", "uk", "arpa", "unknowntld"] {
            let e = narrow_enough(too_broad).unwrap_err();
            assert!(e.contains("public suffix"), "{too_broad}: {e}");
        }
    }
}
