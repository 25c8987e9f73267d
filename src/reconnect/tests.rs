//! Unit tests of the reconnect decisions: events in, actions out, with a
//! seeded RNG and durations as values.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

const CAP: Duration = Duration::from_secs(30);

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// A slot whose first dial is under way.
fn slot(fallback: bool) -> Reconnect {
    let (machine, first) = Reconnect::new(CAP, fallback);
    assert_eq!(first, Action::Dial(Token::Current));
    machine
}

/// A slot serving its first session.
fn serving(fallback: bool) -> Reconnect {
    let mut m = slot(fallback);
    let up = Dialled::Up {
        replica_shared: false,
    };
    let action = m.handle(Event::Dialled(Token::Current, up), &mut rng());
    assert_eq!(action, Action::Serve { reconnected: false });
    m
}

fn backoff_delay(action: Action) -> Duration {
    match action {
        Action::Wait(Wait::Backoff, delay) => delay,
        other => panic!("expected a backoff wait, got {other:?}"),
    }
}

#[test]
fn a_refused_token_is_tried_again_with_the_previous_one_when_rotation_is_accepted() {
    let mut m = slot(true);
    let mut rng = rng();
    let action = m.handle(
        Event::Dialled(Token::Current, Dialled::Refused(401)),
        &mut rng,
    );
    assert_eq!(action, Action::Dial(Token::Previous));
    assert_eq!(m.state(), State::Dialling(Token::Previous));
    let up = Dialled::Up {
        replica_shared: false,
    };
    let action = m.handle(Event::Dialled(Token::Previous, up), &mut rng);
    assert_eq!(action, Action::Serve { reconnected: false });
}

#[test]
fn the_previous_token_refused_too_backs_off_and_the_next_attempt_uses_the_current_one() {
    let mut m = slot(true);
    let mut rng = rng();
    m.handle(
        Event::Dialled(Token::Current, Dialled::Refused(401)),
        &mut rng,
    );
    let action = m.handle(
        Event::Dialled(Token::Previous, Dialled::Refused(401)),
        &mut rng,
    );
    backoff_delay(action);
    assert_eq!(
        m.handle(Event::Waited, &mut rng),
        Action::Dial(Token::Current)
    );
}

#[test]
fn without_accept_rotation_a_refused_token_only_backs_off() {
    let mut m = slot(false);
    let action = m.handle(
        Event::Dialled(Token::Current, Dialled::Refused(401)),
        &mut rng(),
    );
    backoff_delay(action);
    assert_eq!(m.state(), State::Waiting);
}

#[test]
fn a_forbidden_or_version_refusal_backs_off_without_the_previous_token() {
    for status in [403, 426, 429] {
        let mut m = slot(true);
        let action = m.handle(
            Event::Dialled(Token::Current, Dialled::Refused(status)),
            &mut rng(),
        );
        backoff_delay(action);
        assert_eq!(m.state(), State::Waiting, "HTTP {status}");
    }
}

#[test]
fn network_failures_back_off_with_a_growing_ceiling_up_to_the_cap() {
    let (mut m, _) = Reconnect::new(Duration::from_secs(3), false);
    let mut rng = rng();
    let mut ceilings = Vec::new();
    for _ in 0..40 {
        ceilings.push(m.backoff.ceiling());
        let delay =
            backoff_delay(m.handle(Event::Dialled(Token::Current, Dialled::Failed), &mut rng));
        assert!(delay <= *ceilings.last().unwrap());
        assert_eq!(
            m.handle(Event::Waited, &mut rng),
            Action::Dial(Token::Current)
        );
    }
    assert_eq!(ceilings[0], BACKOFF_BASE);
    assert!(ceilings.windows(2).all(|w| w[0] <= w[1]), "{ceilings:?}");
    assert_eq!(ceilings[39], Duration::from_secs(3));
}

#[test]
fn a_stable_session_resets_the_backoff_and_a_short_one_does_not() {
    let mut m = serving(false);
    let mut rng = rng();
    // Ten failures in a row raise the ceiling well above the base.
    m.handle(
        Event::SessionEnded {
            lasted: Duration::ZERO,
        },
        &mut rng,
    );
    for _ in 0..10 {
        m.handle(Event::Waited, &mut rng);
        m.handle(Event::Dialled(Token::Current, Dialled::Failed), &mut rng);
    }
    m.handle(Event::Waited, &mut rng);
    let up = Dialled::Up {
        replica_shared: false,
    };
    let action = m.handle(Event::Dialled(Token::Current, up), &mut rng);
    assert_eq!(action, Action::Serve { reconnected: true });
    let raised = m.backoff.ceiling();
    assert!(raised > BACKOFF_BASE);

    m.handle(
        Event::SessionEnded {
            lasted: STABLE_AFTER - Duration::from_millis(1),
        },
        &mut rng,
    );
    assert!(
        m.backoff.ceiling() >= raised,
        "a short session keeps the ceiling"
    );

    m.handle(Event::Waited, &mut rng);
    m.handle(Event::Dialled(Token::Current, up), &mut rng);
    let delay = backoff_delay(m.handle(
        Event::SessionEnded {
            lasted: STABLE_AFTER,
        },
        &mut rng,
    ));
    assert!(delay <= BACKOFF_BASE, "{delay:?} after a stable session");
    // Drawn from the first step: the ceiling is at the second one now.
    assert_eq!(m.backoff.ceiling(), BACKOFF_BASE * 2);
}

#[test]
fn a_session_on_a_shared_replica_is_redialled_a_bounded_number_of_times() {
    let mut m = slot(false);
    let mut rng = rng();
    let shared = Dialled::Up {
        replica_shared: true,
    };
    for n in 1..=u64::from(SPREAD_REDIALS) {
        match m.handle(Event::Dialled(Token::Current, shared), &mut rng) {
            Action::Wait(Wait::Spread, delay) => {
                assert!(delay >= Duration::from_millis(50 * n));
                assert!(delay <= Duration::from_millis(200 * n));
            }
            other => panic!("redial {n}: {other:?}"),
        }
        assert_eq!(
            m.handle(Event::Waited, &mut rng),
            Action::Dial(Token::Current)
        );
    }
    let action = m.handle(Event::Dialled(Token::Current, shared), &mut rng);
    assert_eq!(action, Action::Serve { reconnected: false });
    // The count starts again for the next session.
    m.handle(
        Event::SessionEnded {
            lasted: STABLE_AFTER,
        },
        &mut rng,
    );
    m.handle(Event::Waited, &mut rng);
    let action = m.handle(Event::Dialled(Token::Current, shared), &mut rng);
    assert!(
        matches!(action, Action::Wait(Wait::Spread, _)),
        "{action:?}"
    );
}

#[test]
fn a_renewal_replaces_the_session_or_keeps_it_when_no_other_opens() {
    let mut m = serving(true);
    let mut rng = rng();
    let up = Dialled::Up {
        replica_shared: false,
    };
    let action = m.handle(Event::Renew(Renewal::NewToken), &mut rng);
    assert_eq!(action, Action::Dial(Token::Current));
    assert_eq!(
        m.handle(Event::Dialled(Token::Current, up), &mut rng),
        Action::Replace
    );
    assert_eq!(m.state(), State::Serving);

    m.handle(Event::Renew(Renewal::RelayDraining), &mut rng);
    let action = m.handle(Event::Dialled(Token::Current, Dialled::Failed), &mut rng);
    assert_eq!(action, Action::Keep(Renewal::RelayDraining));
    assert_eq!(m.state(), State::Serving);

    // A replacement refused with 401 tries the previous token, too.
    m.handle(Event::Renew(Renewal::NewToken), &mut rng);
    let action = m.handle(
        Event::Dialled(Token::Current, Dialled::Refused(401)),
        &mut rng,
    );
    assert_eq!(action, Action::Dial(Token::Previous));
    let action = m.handle(
        Event::Dialled(Token::Previous, Dialled::Refused(401)),
        &mut rng,
    );
    assert_eq!(action, Action::Keep(Renewal::NewToken));
}

#[test]
fn shutdown_stops_from_every_state_and_nothing_follows() {
    let mut rng = rng();
    let mut waiting = slot(false);
    waiting.handle(Event::Dialled(Token::Current, Dialled::Failed), &mut rng);
    let mut replacing = serving(false);
    replacing.handle(Event::Renew(Renewal::RelayDraining), &mut rng);
    for mut m in [slot(false), waiting, serving(false), replacing] {
        assert_eq!(m.handle(Event::Shutdown, &mut rng), Action::Stop);
        assert_eq!(m.state(), State::Stopped);
        assert_eq!(m.handle(Event::Waited, &mut rng), Action::Stop);
    }
}

#[test]
fn unexpected_events_change_nothing() {
    let mut rng = rng();
    let mut m = slot(true);
    // A renewal while the first session is being dialled, a stale report
    // for the other token, a wait that was never asked for.
    assert_eq!(
        m.handle(Event::Renew(Renewal::NewToken), &mut rng),
        Action::Continue
    );
    let up = Dialled::Up {
        replica_shared: false,
    };
    assert_eq!(
        m.handle(Event::Dialled(Token::Previous, up), &mut rng),
        Action::Continue
    );
    assert_eq!(m.handle(Event::Waited, &mut rng), Action::Continue);
    assert_eq!(m.state(), State::Dialling(Token::Current));
}
