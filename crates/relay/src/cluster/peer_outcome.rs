//! What a peer replica's answer means: the agent's response, or the
//! peer's own word that the request reached no agent there.
//!
//! The peer says so in [`header::OUTCOME`], a field only a relay sets: it
//! removes every `Tether-*` field from what an agent relays before adding
//! its own (see [`crate::dispatch`]), and adds this one only to answers it
//! made itself without reaching an agent. So an upstream answering with
//! `Tether-Peer-Outcome` (or the `Tether-Peer-Miss` of earlier versions)
//! has it removed at the peer, and cannot make a served request look
//! unserved — which would have it sent again, or turned into a 503.
//!
//! The forwarding replica reads the field once, into a [`PeerOutcome`],
//! and removes every `Tether-Peer-*` field; nothing else of it is read.

use http::{HeaderMap, HeaderValue, Response};
use hyper::body::Incoming;
use tether_wire::BoxBody;

use super::header;

/// The value of [`header::OUTCOME`] on a peer's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnAnswer {
    /// No session of the peer took the request (none matching any more,
    /// or all closing): it reached no agent.
    NoAgentHere,
    /// The peer refused the peer key (401, or 429 past the failed-auth
    /// budget): it did nothing with the request.
    Refused,
}

impl OwnAnswer {
    fn value(self) -> &'static str {
        match self {
            Self::NoAgentHere => "no-agent",
            Self::Refused => "refused",
        }
    }

    fn parse(value: &HeaderValue) -> Option<Self> {
        match value.as_bytes() {
            b"no-agent" => Some(Self::NoAgentHere),
            b"refused" => Some(Self::Refused),
            _ => None,
        }
    }

    /// Marks `response`, one the peer made itself, with this outcome.
    pub(crate) fn mark(self, mut response: Response<BoxBody>) -> Response<BoxBody> {
        response
            .headers_mut()
            .insert(header::OUTCOME, HeaderValue::from_static(self.value()));
        response
    }
}

/// A peer's answer to a forwarded request, as the forwarding replica
/// takes it.
pub(crate) enum PeerOutcome {
    /// The agent's response (or the peer's answer about a request that
    /// may have reached one): passed to the caller, never re-sent.
    Answered(Response<Incoming>),
    /// The request reached no agent at the peer; the peer's answer says
    /// why, for when it cannot be sent elsewhere.
    NoAgentHere(Response<Incoming>),
    /// The peer refused this replica's peer key.
    Refused,
}

impl PeerOutcome {
    /// Reads a peer's answer, removing every `Tether-Peer-*` field.
    pub(crate) fn of(mut response: Response<Incoming>) -> Self {
        let own = response
            .headers()
            .get(header::OUTCOME)
            .and_then(OwnAnswer::parse);
        strip_peer_fields(response.headers_mut());
        match own {
            None => Self::Answered(response),
            Some(OwnAnswer::NoAgentHere) => Self::NoAgentHere(response),
            Some(OwnAnswer::Refused) => Self::Refused,
        }
    }
}

/// Removes every `Tether-Peer-*` field: they are between replicas only.
pub(crate) fn strip_peer_fields(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(header::PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_answers_round_trip_and_anything_else_is_not_one() {
        for own in [OwnAnswer::NoAgentHere, OwnAnswer::Refused] {
            let marked = own.mark(Response::new(tether_wire::empty_body()));
            assert_eq!(
                OwnAnswer::parse(&marked.headers()[header::OUTCOME]),
                Some(own)
            );
        }
        for value in ["1", "", "No-Agent", "no-agent ", "refused,no-agent"] {
            assert_eq!(OwnAnswer::parse(&HeaderValue::from_static(value)), None);
        }
    }

    #[test]
    fn every_peer_field_is_removed() {
        let mut h = HeaderMap::new();
        h.insert("tether-peer-outcome", HeaderValue::from_static("no-agent"));
        h.insert("tether-peer-miss", HeaderValue::from_static("1"));
        h.insert("tether-agent", HeaderValue::from_static("a"));
        strip_peer_fields(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("tether-agent"));
    }
}
