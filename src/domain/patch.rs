//! How a patch changes a ticket, within the status state machine ([`super::status`]).
//! No I/O here; the ticket actor wraps it.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::status::Status;
use super::ticket::{EventKind, Priority, Ticket};

/// A partial update; `None` leaves a field alone, `assignee: Some(None)` unassigns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketPatch {
    pub subject: Option<String>,
    pub description: Option<String>,
    pub status: Option<Status>,
    pub priority: Option<Priority>,
    pub assignee: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

/// Why a change was refused by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot move a ticket from `{from}` to `{to}`; allowed: {}", allowed_list(*.from))]
    InvalidStatus { from: Status, to: Status },
    #[error("ticket is closed; a closed ticket cannot be changed")]
    Closed,
}

fn allowed_list(from: Status) -> String {
    let allowed = from.allowed_next();
    if allowed.is_empty() {
        "none (final status)".to_string()
    } else {
        allowed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The result of applying a patch: the new ticket and what changed, or nothing when the patch
/// changes no field.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub ticket: Ticket,
    pub kind: EventKind,
    pub changes: Value,
}

/// Applies `patch` to `current`. Bumps the version and `updated_at` only when something changed.
pub fn apply_patch(
    current: &Ticket,
    patch: &TicketPatch,
    now: DateTime<Utc>,
) -> Result<Option<Applied>, TransitionError> {
    let mut next = current.clone();
    let mut changes = Map::new();

    if let Some(status) = patch.status {
        if status != current.status {
            if !current.status.can_become(status) {
                return Err(TransitionError::InvalidStatus {
                    from: current.status,
                    to: status,
                });
            }
            changes.insert(
                "status".into(),
                json!({"from": current.status, "to": status}),
            );
            next.status = status;
        }
    }
    if current.status == Status::Closed && changes.is_empty() && touches_fields(current, patch) {
        return Err(TransitionError::Closed);
    }
    // Values are built only for fields that changed: most patches touch one or two.
    let mut field = |name: &str, from: Value, to: Value| {
        changes.insert(name.into(), json!({"from": from, "to": to}));
    };
    if let Some(subject) = patch.subject.as_ref().filter(|s| **s != current.subject) {
        field("subject", json!(current.subject), json!(subject));
        next.subject = subject.clone();
    }
    if let Some(description) = patch
        .description
        .as_ref()
        .filter(|d| **d != current.description)
    {
        field(
            "description",
            json!(current.description),
            json!(description),
        );
        next.description = description.clone();
    }
    if let Some(priority) = patch.priority.filter(|p| *p != current.priority) {
        field("priority", json!(current.priority), json!(priority));
        next.priority = priority;
    }
    if let Some(assignee) = patch.assignee.as_ref().filter(|a| **a != current.assignee) {
        field("assignee", json!(current.assignee), json!(assignee));
        next.assignee = assignee.clone();
    }
    if let Some(tags) = patch.tags.as_ref().filter(|t| **t != current.tags) {
        field("tags", json!(current.tags), json!(tags));
        next.tags = tags.clone();
    }

    if changes.is_empty() {
        return Ok(None);
    }
    let kind = if changes.len() == 1 && changes.contains_key("status") {
        EventKind::StatusChanged
    } else {
        EventKind::Updated
    };
    next.version = current.version + 1;
    next.updated_at = now;
    Ok(Some(Applied {
        ticket: next,
        kind,
        changes: Value::Object(changes),
    }))
}

/// Whether the patch would change any non-status field.
fn touches_fields(current: &Ticket, patch: &TicketPatch) -> bool {
    patch
        .subject
        .as_ref()
        .is_some_and(|v| *v != current.subject)
        || patch
            .description
            .as_ref()
            .is_some_and(|v| *v != current.description)
        || patch.priority.is_some_and(|v| v != current.priority)
        || patch
            .assignee
            .as_ref()
            .is_some_and(|v| *v != current.assignee)
        || patch.tags.as_ref().is_some_and(|v| *v != current.tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::TicketId;
    use crate::domain::ticket::Source;

    fn ticket(status: Status) -> Ticket {
        let now = Utc::now();
        Ticket {
            id: TicketId::new(),
            subject: "s".into(),
            description: "d".into(),
            status,
            priority: Priority::Normal,
            requester: "r".into(),
            assignee: None,
            tags: vec![],
            source: Source::Api,
            chat_session_id: None,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    #[test]
    fn every_listed_transition_is_accepted_and_others_refused() {
        for from in Status::ALL {
            for to in Status::ALL {
                if from == to {
                    continue;
                }
                let patch = TicketPatch {
                    status: Some(to),
                    ..Default::default()
                };
                let result = apply_patch(&ticket(from), &patch, Utc::now());
                if from.can_become(to) {
                    let applied = result.unwrap().unwrap();
                    assert_eq!(applied.ticket.status, to);
                    assert_eq!(applied.ticket.version, 2);
                    assert_eq!(applied.kind, EventKind::StatusChanged);
                } else {
                    assert!(result.is_err(), "{from} -> {to} must be refused");
                }
            }
        }
    }

    #[test]
    fn resolved_reopens_and_closed_is_final() {
        assert!(Status::Resolved.can_become(Status::Open));
        assert!(Status::Closed.allowed_next().is_empty());
        let err = apply_patch(
            &ticket(Status::Closed),
            &TicketPatch {
                status: Some(Status::Open),
                ..Default::default()
            },
            Utc::now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("none (final status)"), "{err}");
    }

    #[test]
    fn refusal_names_allowed_statuses() {
        let err = apply_patch(
            &ticket(Status::Resolved),
            &TicketPatch {
                status: Some(Status::Pending),
                ..Default::default()
            },
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot move a ticket from `resolved` to `pending`; allowed: open, closed"
        );
    }

    #[test]
    fn no_op_patch_changes_nothing() {
        let t = ticket(Status::Open);
        let patch = TicketPatch {
            subject: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(apply_patch(&t, &patch, Utc::now()).unwrap(), None);
    }

    #[test]
    fn field_changes_are_recorded_from_and_to() {
        let t = ticket(Status::Open);
        let patch = TicketPatch {
            priority: Some(Priority::Urgent),
            assignee: Some(Some("bob".into())),
            ..Default::default()
        };
        let applied = apply_patch(&t, &patch, Utc::now()).unwrap().unwrap();
        assert_eq!(applied.kind, EventKind::Updated);
        assert_eq!(applied.changes["priority"]["to"], "urgent");
        assert_eq!(applied.changes["assignee"]["from"], Value::Null);
        assert_eq!(applied.changes["assignee"]["to"], "bob");
    }

    #[test]
    fn closed_ticket_refuses_field_edits() {
        let t = ticket(Status::Closed);
        let patch = TicketPatch {
            subject: Some("new".into()),
            ..Default::default()
        };
        assert_eq!(
            apply_patch(&t, &patch, Utc::now()).unwrap_err(),
            TransitionError::Closed
        );
    }
}
