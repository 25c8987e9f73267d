//! When a connection slot dials, waits, serves, replaces its session or
//! stops: the reconnect decisions as a sans-IO state machine.
//!
//! As in quinn-proto, nothing here touches a socket, a clock or a file:
//! [`Reconnect::handle`] takes what happened ([`Event`]) and answers what
//! to do next ([`Action`]); the driver in [`crate::tunnel`] does it (dial,
//! sleep, spawn the session, drain it) and reports back. Time comes in as
//! values (how long a session lasted) and randomness from the caller's
//! RNG, so every decision is a unit test.
//!
//! The rules:
//! - A failed attempt waits a [`Backoff`] delay (full jitter, doubling to
//!   a plateau, then to `[relay] backoff_max`); a session that stayed up
//!   [`STABLE_AFTER`] resets it.
//! - The relay refusing the token (401) with `accept_rotation` and a
//!   `token_file` is tried once more with the previous token
//!   ([`crate::rotation`]: the relay may have pushed a wrong one). Any
//!   other refusal (403, 426 for a protocol or version the relay refuses,
//!   429) waits like a network failure: an operator fixes those, and the
//!   agent comes back once they have.
//! - A session landing on a relay replica another slot of this agent
//!   already uses is redialled after a short random delay, at most
//!   [`SPREAD_REDIALS`] times, so one replica restarting never takes all
//!   of an agent's sessions.
//! - A new token, a new configuration or the relay's draining notice opens
//!   a replacement session before the old one drains; if none can be
//!   opened the current one is kept.
//! - Shutdown stops everything, whatever the state.

use std::time::Duration;

use rand::Rng;

use crate::backoff::Backoff;

/// A session that lasted this long resets the backoff, so the first
/// attempt after it ends comes within `BACKOFF_BASE`.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// First reconnect ceiling. Small, so an agent is back within a second of
/// a relay restart; full jitter and doubling spread a crowd over the
/// outage's length (the cap is `[relay] backoff_max`).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Redials of one slot to land on a replica no other slot uses, before
/// it takes a shared one (there may be fewer replicas than sessions).
pub const SPREAD_REDIALS: u32 = 6;

/// Which token an attempt presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The token in use (`token` or `token_file`).
    Current,
    /// `token_file.prev`, after the relay refused the current one.
    Previous,
}

/// Why a slot opens a replacement session while its session is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The token file or the configuration changed.
    NewToken,
    /// The relay replica said it is shutting down.
    RelayDraining,
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NewToken => "new token or configuration",
            Self::RelayDraining => "relay replica draining",
        })
    }
}

/// How one dial attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialled {
    /// The session is up. `replica_shared`: it landed on a relay replica
    /// another slot of this agent already holds (cluster mode).
    Up {
        /// Another slot is on the same replica.
        replica_shared: bool,
    },
    /// The relay answered the upgrade with this HTTP status.
    Refused(u16),
    /// No answer: token unreadable, TCP, TLS, handshake or timeout; or no
    /// previous token to try.
    Failed,
}

/// What happened, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The attempt asked for with [`Action::Dial`] ended.
    Dialled(Token, Dialled),
    /// The wait asked for with [`Action::Wait`] is over.
    Waited,
    /// The session being served ended on its own after `lasted`.
    SessionEnded {
        /// How long it was up.
        lasted: Duration,
    },
    /// A replacement session is wanted.
    Renew(Renewal),
    /// The agent is shutting down.
    Shutdown,
}

/// Why the driver waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// After a failed attempt or a session that ended.
    Backoff,
    /// Redialling to land on a replica of its own.
    Spread,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Dial the relay with this token.
    Dial(Token),
    /// Drop what was just dialled (if anything), sleep, then report
    /// [`Event::Waited`].
    Wait(Wait, Duration),
    /// Serve the session just dialled. `reconnected`: this slot had one
    /// before (the reconnect metric).
    Serve {
        /// Not the slot's first session.
        reconnected: bool,
    },
    /// Serve the session just dialled and drain the one served so far,
    /// once the relay has registered the new one.
    Replace,
    /// No replacement could be opened: keep serving the current session
    /// (for [`Renewal::RelayDraining`], it ends when the relay has drained).
    Keep(Renewal),
    /// Nothing to do: keep serving.
    Continue,
    /// Drain the session being served, if any, and stop.
    Stop,
}

/// Where a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to dial, between attempts.
    Waiting,
    /// An attempt for a first (or next) session is under way.
    Dialling(Token),
    /// A session is up and served.
    Serving,
    /// A replacement attempt is under way while the session is served.
    Replacing(Token, Renewal),
    /// Shut down.
    Stopped,
}

/// The reconnect state of one connection slot.
#[derive(Debug, Clone)]
pub struct Reconnect {
    state: State,
    backoff: Backoff,
    /// `accept_rotation` with a `token_file`: a 401 may be a pushed token
    /// gone wrong, worth one attempt with the previous one.
    fallback: bool,
    /// Redials in a row to spread over replicas.
    spread_redials: u32,
    /// Sessions this slot has opened.
    opened: u64,
}

impl Reconnect {
    /// A slot about to dial: delays up to `backoff_max`; `fallback` allows
    /// the previous-token attempt after a 401. The first action is
    /// [`Action::Dial`] with the current token.
    pub fn new(backoff_max: Duration, fallback: bool) -> (Self, Action) {
        let machine = Self {
            state: State::Dialling(Token::Current),
            backoff: Backoff::new(BACKOFF_BASE, backoff_max),
            fallback,
            spread_redials: 0,
            opened: 0,
        };
        (machine, Action::Dial(Token::Current))
    }

    /// Where the slot is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The next action after `event`; `rng` draws the jitter.
    pub fn handle(&mut self, event: Event, rng: &mut impl Rng) -> Action {
        let (state, action) = match (self.state, event) {
            (State::Stopped, _) | (_, Event::Shutdown) => (State::Stopped, Action::Stop),
            (State::Waiting, Event::Waited) => (
                State::Dialling(Token::Current),
                Action::Dial(Token::Current),
            ),
            (State::Dialling(token), Event::Dialled(from, outcome)) if from == token => {
                self.dialled(token, outcome, rng)
            }
            (State::Serving, Event::SessionEnded { lasted }) => {
                if lasted >= STABLE_AFTER {
                    self.backoff.reset();
                }
                self.back_off(rng)
            }
            (State::Serving, Event::Renew(why)) => (
                State::Replacing(Token::Current, why),
                Action::Dial(Token::Current),
            ),
            (State::Replacing(token, why), Event::Dialled(from, outcome)) if from == token => {
                match outcome {
                    Dialled::Up { .. } => (State::Serving, Action::Replace),
                    Dialled::Refused(401) if token == Token::Current && self.fallback => (
                        State::Replacing(Token::Previous, why),
                        Action::Dial(Token::Previous),
                    ),
                    Dialled::Refused(_) | Dialled::Failed => (State::Serving, Action::Keep(why)),
                }
            }
            // Anything else is an event the state does not expect (a
            // renewal while dialling, a stale report): nothing changes.
            (state, _) => (state, Action::Continue),
        };
        self.state = state;
        action
    }

    fn dialled(&mut self, token: Token, outcome: Dialled, rng: &mut impl Rng) -> (State, Action) {
        match outcome {
            Dialled::Up {
                replica_shared: true,
            } if self.spread_redials < SPREAD_REDIALS => {
                self.spread_redials += 1;
                let delay = Duration::from_millis(
                    rng.random_range(50..=200) * u64::from(self.spread_redials),
                );
                (State::Waiting, Action::Wait(Wait::Spread, delay))
            }
            Dialled::Up { .. } => {
                self.spread_redials = 0;
                self.opened += 1;
                let reconnected = self.opened > 1;
                (State::Serving, Action::Serve { reconnected })
            }
            Dialled::Refused(401) if token == Token::Current && self.fallback => (
                State::Dialling(Token::Previous),
                Action::Dial(Token::Previous),
            ),
            Dialled::Refused(_) | Dialled::Failed => self.back_off(rng),
        }
    }

    fn back_off(&mut self, rng: &mut impl Rng) -> (State, Action) {
        let delay = self.backoff.next_delay(rng);
        (State::Waiting, Action::Wait(Wait::Backoff, delay))
    }
}

#[cfg(test)]
mod tests;
