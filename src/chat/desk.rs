//! The session's port to tickets: a ticket opened from a chat. The session says what the ticket is
//! (subject, description, priority, who asked, the transcript) and the desk makes it one write:
//! the ticket (visible over REST at once) and Django's chat record of it
//! (`POST /api/livechat/tickets/create/`, through the outbox) are stored in one transaction, so a
//! crash can never leave one without the other, and a failure means no ticket, so a retry cannot
//! make two.
//!
//! [`RegistryDesk`] is the implementation over the ticket registry; the session knows only the
//! [`TicketDesk`] trait.

use std::sync::Arc;

use actix::Addr;
use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::domain::chat::TranscriptLine;
use crate::domain::ids::{RequestId, SessionId, TicketId};
use crate::domain::principal::Principal;
use crate::domain::status::Status;
use crate::domain::ticket::{Priority, Source, Ticket};
use crate::store::{ChatTicketRecord, OutboxRecord};
use crate::ticket::registry::{CreateTicket, TicketRegistry};

/// A ticket to open from a chat.
#[derive(Debug, Clone)]
pub struct ChatTicket {
    pub session_id: SessionId,
    pub subject: String,
    pub description: String,
    pub priority: Priority,
    /// The customer's email, or their id when they have none.
    pub requester: String,
    /// The chat so far (within `sessions.transcript_max_bytes`).
    pub transcript: Vec<TranscriptLine>,
    /// Who asked: the customer (for themselves, or through the AI) or the agent holding the chat.
    pub actor: Principal,
}

/// Why no ticket was opened (nothing was stored).
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("the ticket could not be stored: {0}")]
    Store(String),
    #[error("the ticket registry did not answer")]
    Unavailable,
}

/// Opens tickets from chats.
pub trait TicketDesk: Send + Sync + 'static {
    fn open(&self, ticket: ChatTicket) -> LocalBoxFuture<'static, Result<TicketId, DeskError>>;
}

/// The desk over the ticket registry and its store.
pub struct RegistryDesk {
    tickets: Addr<TicketRegistry>,
}

impl RegistryDesk {
    pub fn shared(tickets: Addr<TicketRegistry>) -> Arc<dyn TicketDesk> {
        Arc::new(Self { tickets })
    }
}

impl TicketDesk for RegistryDesk {
    fn open(&self, t: ChatTicket) -> LocalBoxFuture<'static, Result<TicketId, DeskError>> {
        let now = crate::store::now();
        let id = TicketId::new();
        let request_id = Some(RequestId::from(id.to_string()));
        let ticket = Ticket {
            id,
            subject: t.subject.trim().to_string(),
            description: t.description.clone(),
            status: Status::Open,
            priority: t.priority,
            requester: t.requester.clone(),
            assignee: None,
            tags: vec!["chat".into()],
            source: Source::Chat,
            chat_session_id: Some(t.session_id.to_string()),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let record = ChatTicketRecord {
            session_id: t.session_id,
            ticket_id: id,
            subject: ticket.subject.clone(),
            description: t.description,
            priority: t.priority,
            requester: t.requester,
            transcript: t.transcript,
            request_id: request_id.clone(),
        };
        let sent = self.tickets.send(CreateTicket {
            ticket,
            actor: t.actor,
            request_id,
            also: Some(OutboxRecord::ChatTicket(record)),
        });
        async move {
            match sent.await {
                Ok(Ok(ticket)) => Ok(ticket.id),
                Ok(Err(e)) => Err(DeskError::Store(crate::bridge::client::chain(&e))),
                Err(_) => Err(DeskError::Unavailable),
            }
        }
        .boxed_local()
    }
}
