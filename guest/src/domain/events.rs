//! The audit trail: what happened to a key, when, and who asked for it.
//! Events are written by the store in the same transaction as the change
//! they record; they never hold a raw key or a hash.

use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode};
use super::random;
use super::time::{Millis, format_rfc3339};

/// Prefix of every event id.
pub const ID_PREFIX: &str = "event-";
/// Random characters after the id prefix.
pub const ID_RANDOM_LEN: usize = 20;
/// Events per page unless the request asks otherwise.
pub const DEFAULT_PAGE: u32 = 100;
/// The most events one page may hold.
pub const MAX_PAGE: u32 = 500;

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Deactivated,
    Deleted,
    Rolled,
    Leaked,
}

impl EventKind {
    /// The `type` of the event in the REST API.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "key.created",
            EventKind::Deactivated => "key.deactivated",
            EventKind::Deleted => "key.deleted",
            EventKind::Rolled => "key.rolled",
            EventKind::Leaked => "key.leaked",
        }
    }
}

/// How a change was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A management request with a Bearer token.
    Token,
    /// The command line, or a host calling the typed `keys` interface.
    Cli,
    /// A secret scanning alert.
    SecretScanning,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Token => "token",
            Via::Cli => "cli",
            Via::SecretScanning => "secret-scanning",
        }
    }
}

/// Who asked for a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub via: Via,
    /// A Bearer token's `sub`, when there was one.
    pub subject: Option<String>,
}

impl Actor {
    pub fn cli() -> Actor {
        Actor {
            via: Via::Cli,
            subject: None,
        }
    }
}

/// What an event adds beyond its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Details {
    Nothing,
    Rolled {
        new_key_id: String,
        grace_period_seconds: u32,
    },
    Leaked {
        url: String,
        source: String,
    },
}

impl Details {
    /// The JSON object the REST API shows, and the store keeps verbatim.
    pub fn to_json(&self) -> Value {
        match self {
            Details::Nothing => json!({}),
            Details::Rolled {
                new_key_id,
                grace_period_seconds,
            } => json!({"newKeyId": new_key_id, "gracePeriodSeconds": grace_period_seconds}),
            Details::Leaked { url, source } => json!({"url": url, "source": source}),
        }
    }

    /// The details of a `kind` event from the text the store kept; anything
    /// unreadable is shown as no details rather than failing the whole page.
    pub fn parse(kind: EventKind, text: &str) -> Details {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let text_of = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        match kind {
            EventKind::Rolled => match (
                text_of("newKeyId"),
                value
                    .get("gracePeriodSeconds")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok()),
            ) {
                (Some(new_key_id), Some(grace_period_seconds)) => Details::Rolled {
                    new_key_id,
                    grace_period_seconds,
                },
                _ => Details::Nothing,
            },
            EventKind::Leaked => match (text_of("url"), text_of("source")) {
                (Some(url), Some(source)) => Details::Leaked { url, source },
                _ => Details::Nothing,
            },
            _ => Details::Nothing,
        }
    }
}

/// One entry of a tenant's audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub tenant: String,
    pub key_id: String,
    pub at: Millis,
    pub kind: EventKind,
    pub actor: Actor,
    pub details: Details,
}

impl Event {
    /// A new event with a fresh id.
    pub fn new(
        tenant: &str,
        key_id: &str,
        at: Millis,
        kind: EventKind,
        actor: &Actor,
        details: Details,
    ) -> Result<Event, ApiError> {
        let id = random::alphanumeric(ID_RANDOM_LEN)
            .map_err(|e| ApiError::internal(format!("random: {}", e.0)))?;
        Ok(Event {
            id: format!("{ID_PREFIX}{id}"),
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
            at,
            kind,
            actor: actor.clone(),
            details,
        })
    }

    /// The REST shape.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "at": format_rfc3339(self.at),
            "type": self.kind.name(),
            "keyId": self.key_id,
            "actor": {"via": self.actor.via.name(), "subject": self.actor.subject},
            "details": self.details.to_json(),
        })
    }
}

/// An event with its place in the trail (assigned by the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: u64,
    pub event: Event,
}

/// One page of events, newest first, and where the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<Event>,
    pub next: Option<String>,
}

impl Page {
    pub fn to_json(&self) -> Value {
        json!({
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
            "next": self.next,
        })
    }
}

/// The cursor that continues after the event at `seq`.
pub fn cursor_after(seq: u64) -> String {
    seq.to_string()
}

/// The position a cursor stands for: events before it come next.
pub fn parse_cursor(cursor: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid_request(
            "cursor must be the `next` value of an earlier page of events, unchanged",
        )
    };
    if cursor.is_empty() || cursor.len() > 20 || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    cursor.parse().map_err(|_| bad())
}

/// The page size a request asks for, checked.
pub fn check_limit(limit: u32) -> Result<u32, ApiError> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit must be an integer from 1 to {MAX_PAGE}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, details: Details) -> Event {
        Event::new(
            "acme",
            "apikey-00000000000000000000",
            1_772_971_200_000,
            kind,
            &Actor {
                via: Via::Token,
                subject: Some("ops@acme".into()),
            },
            details,
        )
        .unwrap()
    }

    #[test]
    fn events_have_the_documented_shape() {
        let e = event(
            EventKind::Rolled,
            Details::Rolled {
                new_key_id: "apikey-11111111111111111111".into(),
                grace_period_seconds: 30,
            },
        );
        assert!(e.id.starts_with(ID_PREFIX) && e.id.len() == ID_PREFIX.len() + ID_RANDOM_LEN);
        let json = e.to_json();
        assert_eq!(
            json,
            json!({
                "id": e.id,
                "at": "2026-03-08T12:00:00.000Z",
                "type": "key.rolled",
                "keyId": "apikey-00000000000000000000",
                "actor": {"via": "token", "subject": "ops@acme"},
                "details": {"newKeyId": "apikey-11111111111111111111", "gracePeriodSeconds": 30},
            })
        );
        let cli = Event::new(
            "acme",
            "k",
            0,
            EventKind::Deleted,
            &Actor::cli(),
            Details::Nothing,
        )
        .unwrap()
        .to_json();
        assert_eq!(cli["actor"], json!({"via": "cli", "subject": null}));
        assert_eq!(cli["details"], json!({}));
        assert_eq!(cli["type"], "key.deleted");
    }

    #[test]
    fn details_survive_the_store_and_bad_text_shows_as_none() {
        for (kind, details) in [
            (EventKind::Created, Details::Nothing),
            (
                EventKind::Rolled,
                Details::Rolled {
                    new_key_id: "apikey-x".into(),
                    grace_period_seconds: 604_800,
                },
            ),
            (
                EventKind::Leaked,
                Details::Leaked {
                    url: "https://github.com/o/r/blob/x".into(),
                    source: "content".into(),
                },
            ),
        ] {
            let text = details.to_json().to_string();
            assert_eq!(Details::parse(kind, &text), details);
        }
        assert_eq!(
            Details::parse(EventKind::Rolled, "not json"),
            Details::Nothing
        );
        assert_eq!(Details::parse(EventKind::Leaked, "{}"), Details::Nothing);
    }

    #[test]
    fn cursors_are_positions_and_nothing_else() {
        assert_eq!(parse_cursor(&cursor_after(42)).unwrap(), 42);
        for bad in ["", "-1", "1.5", "abc", "99999999999999999999", "1 ", "+1"] {
            assert_eq!(
                parse_cursor(bad).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{bad}"
            );
        }
        assert!(check_limit(0).is_err() && check_limit(501).is_err());
        assert_eq!(check_limit(500).unwrap(), 500);
    }
}
