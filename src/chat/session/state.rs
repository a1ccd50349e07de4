//! A chat session's state as one serializable value, and the pure rules that change it: numbering
//! server frames, the bounded history kept for resume, applying a customer message once per
//! `client_id`, one AI call in flight at a time (messages sent meanwhile go into the next call),
//! and turning the AI's answer into messages and actions. The session actor around it does the I/O
//! and carries out the [`Effect`]s it returns.
//!
//! Everything here is data a later release can write to disk and read back, so a session can be
//! carried across a restart.

use std::collections::VecDeque;

pub use crate::chat::history::ReplayError;
use crate::chat::history::{History, Numbered};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chat::protocol::{Author, CloseReason, Offer, ProposedAction, ServerFrame};
use crate::domain::chat::{AiAction, ChatRole, TranscriptLine};
use crate::domain::ids::{AgentId, MessageId, SessionId};
use crate::domain::ticket::Priority;

/// Limits one session lives within (from `[sessions]`).
pub use crate::config::SessionLimits as Limits;

/// The customer of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerInfo {
    /// From a token's `sub`; an anonymous visitor's is `anonymous:<session id>`.
    pub id: String,
    pub name: String,
    pub email: String,
    /// A token identified them.
    pub known: bool,
}

pub use super::owner::{AfterLeave, AgentRef, Owner, OwnerEvent, Refused};

/// How the session treats each AI action.
trait ActionRules {
    fn requires_confirmation(&self) -> bool;
    fn proposal(&self) -> Option<(ProposedAction, String)>;
}

impl ActionRules for AiAction {
    fn requires_confirmation(&self) -> bool {
        match self {
            Self::CreateTicket {
                requires_confirmation,
                ..
            }
            | Self::ManageService {
                requires_confirmation,
                ..
            } => *requires_confirmation,
            Self::Handoff { .. } | Self::Unknown => false,
        }
    }

    fn proposal(&self) -> Option<(ProposedAction, String)> {
        match self {
            Self::CreateTicket { subject, .. } => Some((
                ProposedAction::CreateTicket {
                    subject: subject.clone(),
                },
                format!("Open a support ticket: \"{subject}\"?"),
            )),
            Self::ManageService {
                service, operation, ..
            } => Some((
                ProposedAction::ManageService {
                    service: service.clone(),
                    operation: operation.clone(),
                },
                format!("Run `{operation}` on your {service} service?"),
            )),
            Self::Handoff { reason } => Some((
                ProposedAction::Handoff {
                    reason: reason.clone(),
                },
                "Hand this chat to a human agent?".to_string(),
            )),
            Self::Unknown => None,
        }
    }
}

/// One AI call to make: the message(s) it answers and the context before them.
#[derive(Debug, Clone, PartialEq)]
pub struct AiCall {
    /// The newest customer message the call answers (Django's `message_id`).
    pub message_id: MessageId,
    /// The customer's text: one message, or every message sent while the previous call was out.
    pub text: String,
    pub history: Vec<TranscriptLine>,
}

/// What the session actor must do after a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send to the attached connection (already in the history when it has a seq).
    Send(ServerFrame),
    CallAi(AiCall),
    /// Create a ticket from this chat (the AI's action, or the customer's `ticket.create`).
    CreateTicket {
        subject: String,
        description: String,
        priority: Priority,
    },
    RunService {
        action_id: Uuid,
        service: String,
        operation: String,
        params: serde_json::Value,
    },
    /// The session now waits for a human agent: put it in the routing queue (and tell Django).
    Enqueue {
        reason: String,
    },
    /// The session ended: close the connection after the frames before this.
    Close(CloseReason),
}

/// How a customer message was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// New: this seq, and what to do. The message itself is in the history (for a resume or a
    /// transcript); the sender is answered with an ack, not an echo.
    New { seq: u64, effects: Vec<Effect> },
    /// The same `client_id` was applied before, with this seq; nothing else happens.
    Duplicate { seq: u64 },
    /// The session is closed.
    Closed,
}

/// An action waiting for the customer's word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    action_id: Uuid,
    action: AiAction,
}

/// The AI's turn: the message whose answer is awaited, and the messages sent meanwhile (each with
/// its seq, so the call's context stops before the first message it answers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AiTurn {
    in_flight: Option<MessageId>,
    /// The seq of the first message the call in flight answers: a restarted process asks again
    /// from it.
    #[serde(default)]
    from: u64,
    waiting: Vec<(MessageId, String, u64)>,
}

/// Whose `client_id` a remembered message carried: customers and each agent have their own space,
/// so one author's id can never swallow another's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Sender {
    Customer,
    Agent(AgentId),
}

/// Tickets opened from this chat in the last hour, for `sessions.tickets_per_hour`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TicketBudget {
    /// When each was opened, oldest first.
    opened: VecDeque<DateTime<Utc>>,
}

/// One session's whole state; see the module docs. Serialized, it is the session's record in the
/// chat journal: the history and the remembered `client_id`s are not in it, since they are the
/// journal's frames and are rebuilt from them ([`SessionState::restore`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub id: SessionId,
    /// A hash of the resume token ([`hash_token`]); the token itself is only ever sent once.
    pub resume_token_hash: TokenHash,
    pub customer: CustomerInfo,
    pub started_at: DateTime<Utc>,
    pub owner: Owner,
    /// Since when the session waits in the routing queue, so a restart requeues in arrival order.
    #[serde(default)]
    pub queued_since: Option<DateTime<Utc>>,
    /// Frames with a seq; at most `history_max`.
    #[serde(skip)]
    history: History<ServerFrame>,
    /// `(sender, client_id, seq)` of recent messages, oldest first; at most `dedupe_max`.
    #[serde(skip)]
    recent: VecDeque<(Sender, String, u64)>,
    ai: AiTurn,
    pending: Vec<Pending>,
    #[serde(default)]
    tickets: TicketBudget,
}

/// A message frame as Django's transcript line. Only what the customer, the AI and agents wrote is
/// part of the transcript (Django's contract knows those roles); system notes and other frames are
/// not.
fn transcript_line(frame: &ServerFrame) -> Option<TranscriptLine> {
    match frame {
        ServerFrame::Message { from, text, at, .. } => Some(TranscriptLine {
            role: match from {
                Author::Customer => ChatRole::Customer,
                Author::Ai => ChatRole::Ai,
                Author::Agent => ChatRole::Agent,
                Author::System => return None,
            },
            text: text.clone(),
            at: *at,
        }),
        _ => None,
    }
}

impl Numbered for ServerFrame {
    fn seq(&self) -> Option<u64> {
        ServerFrame::seq(self)
    }

    fn weight(&self) -> usize {
        ServerFrame::weight(self)
    }
}

/// The text shown when the AI cannot answer; the message offers a human and a ticket.
pub const AI_UNAVAILABLE: &str = "Our assistant cannot answer right now. You can ask for a person \
to take over, open a ticket and someone will get back to you, or try again in a moment.";

/// The JSON around one transcript line's text (`role`, `at`, quotes), for the transcript budget.
const TRANSCRIPT_LINE_OVERHEAD: usize = 64;

/// What a customer failed by the AI or a service may do instead.
pub const FALLBACK_OFFERS: [Offer; 2] = [Offer::Handoff, Offer::Ticket];

/// The form in which a resume token is kept: hex SHA-256. The token has 256 random bits, so an
/// unsalted hash does not help anyone guess it.
pub fn hash_token(token: &str) -> TokenHash {
    use sha2::Digest;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&sha2::Sha256::digest(token.as_bytes()));
    TokenHash(hash)
}

/// A resume token's SHA-256, held inline (a session keeps it for as long as it lives), written as
/// hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn to_hex(&self) -> String {
        // Written with every append to the journal: one allocation, no formatting machinery.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for b in self.0 {
            hex.push(DIGITS[usize::from(b >> 4)] as char);
            hex.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        hex
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(hash))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(…)")
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        Self::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("not a 64-digit hex hash"))
    }
}

/// Why a journal record could not be read back as a session.
#[derive(Debug, thiserror::Error)]
#[error("the session record is not readable: {0}")]
pub struct Unreadable(#[from] serde_json::Error);

/// Why the customer's `handoff.request` was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffRefused {
    Closed,
}

impl SessionState {
    pub fn new(
        id: SessionId,
        resume_token_hash: TokenHash,
        customer: CustomerInfo,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            resume_token_hash,
            customer,
            started_at: now,
            owner: Owner::Ai,
            queued_since: None,
            history: History::default(),
            recent: VecDeque::new(),
            ai: AiTurn::default(),
            pending: Vec::new(),
            tickets: TicketBudget::default(),
        }
    }

    /// A session read back from the chat journal: its record (`state`, as [`Self::to_record`] wrote
    /// it), its newest seq, and its newest frames (oldest first), of which the history keeps what
    /// fits its budgets. The remembered `client_id`s are the kept messages' (an agent's are
    /// remembered as the holder's when the name matches).
    pub fn restore(
        limits: &Limits,
        state: &str,
        last_seq: u64,
        frames: Vec<ServerFrame>,
    ) -> Result<Self, Unreadable> {
        let mut restored: Self = serde_json::from_str(state)?;
        let holder = restored.owner.agent().cloned();
        for frame in &frames {
            if let ServerFrame::Message {
                seq,
                from,
                client_id: Some(client_id),
                name,
                ..
            } = frame
            {
                let sender = match (from, &holder) {
                    (Author::Customer, _) => Sender::Customer,
                    (Author::Agent, Some(h)) if name.as_deref() == Some(h.name.as_str()) => {
                        Sender::Agent(h.id.clone())
                    }
                    _ => continue,
                };
                restored.remember(limits, sender, client_id.clone(), *seq);
            }
        }
        restored.history = History::restore(
            last_seq,
            frames,
            limits.history_max,
            limits.history_max_bytes,
        );
        Ok(restored)
    }

    /// The session's record for the chat journal (see the type's docs).
    pub fn to_record(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether `token` is this session's resume token (compared in constant time).
    pub fn token_matches(&self, token: &str) -> bool {
        crate::domain::secret::constant_time_eq(&hash_token(token).0, &self.resume_token_hash.0)
    }

    /// The AI call a restarted process must make again: the one in flight when the last one
    /// stopped, with the same `message_id` (Django's idempotency key) and the same messages.
    pub fn pending_ai_call(&self, limits: &Limits) -> Option<AiCall> {
        let message_id = self.ai.in_flight?;
        if !self.owner.is_ai() {
            return None;
        }
        let until = self.ai.waiting.first().map_or(u64::MAX, |(_, _, seq)| *seq);
        let text = self
            .history
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Message {
                    seq,
                    from: Author::Customer,
                    text,
                    ..
                } if *seq >= self.ai.from && *seq < until => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            return None;
        }
        Some(AiCall {
            message_id,
            text,
            history: self.ai_context(limits, self.ai.from),
        })
    }

    /// Whether work is owed that only a live actor does: an AI answer, or a human (queued or held).
    pub fn needs_actor(&self) -> bool {
        self.ai.in_flight.is_some() || matches!(self.owner, Owner::Queued { .. } | Owner::Agent(_))
    }

    /// The bytes the kept history holds (for the process-wide budget).
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// The newest seq given out (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.history.last_seq()
    }

    pub fn is_closed(&self) -> bool {
        self.owner == Owner::Closed
    }

    /// Applies an owner change, keeping the owner when it is refused.
    fn set_owner(&mut self, event: OwnerEvent, after_leave: AfterLeave) -> Result<(), Refused> {
        self.owner = self.owner.apply(event, after_leave)?;
        Ok(())
    }

    /// Frees what an idle session need not hold (spare capacity of its buffers).
    pub fn shrink(&mut self) {
        self.history.shrink();
        self.recent.shrink_to_fit();
        self.pending.shrink_to_fit();
        self.ai.waiting.shrink_to_fit();
    }

    /// Numbers `make`'s frame with the next seq, keeps it, and returns it.
    fn record(&mut self, limits: &Limits, make: impl FnOnce(u64) -> ServerFrame) -> ServerFrame {
        self.history
            .record(limits.history_max, limits.history_max_bytes, make)
    }

    fn message(
        &mut self,
        limits: &Limits,
        from: Author,
        text: String,
        client_id: Option<String>,
        now: DateTime<Utc>,
    ) -> ServerFrame {
        self.record(limits, |seq| ServerFrame::Message {
            seq,
            from,
            text,
            at: now,
            client_id,
            name: None,
            offers: Vec::new(),
        })
    }

    /// A system message, numbered and kept.
    pub fn system(&mut self, limits: &Limits, text: String, now: DateTime<Utc>) -> ServerFrame {
        self.message(limits, Author::System, text, None, now)
    }

    /// A system message telling of a failure, offering a human and a ticket instead.
    pub fn fallback(&mut self, limits: &Limits, text: String, now: DateTime<Utc>) -> ServerFrame {
        self.record(limits, |seq| ServerFrame::Message {
            seq,
            from: Author::System,
            text,
            at: now,
            client_id: None,
            name: None,
            offers: FALLBACK_OFFERS.to_vec(),
        })
    }

    /// Every kept frame after `last_seq`, oldest first, or why they cannot all be given.
    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<ServerFrame>, ReplayError> {
        self.history.replay_after(last_seq)
    }

    /// The kept frames after `last_seq` (for an agent following the session).
    pub fn frames_after(&self, last_seq: u64) -> Vec<ServerFrame> {
        self.history.after(last_seq).cloned().collect()
    }

    /// The newest kept frames before `before` (all when `None`) within `max_bytes`, and whether
    /// older ones are kept: what an agent is shown of the chat at once.
    pub fn page_before(&self, before: Option<u64>, max_bytes: usize) -> (Vec<ServerFrame>, bool) {
        self.history.page_before(before, max_bytes)
    }

    /// The chat so far as Django's transcript lines, oldest first: the newest that fit in
    /// `transcript_max_bytes` (of their texts), so a copy into a ticket or a handoff record stays
    /// within what the outbox and Django's request limit take.
    /// A line that does not fit whole is cut (at a character boundary, marked with `…`) and ends
    /// the copy, so even one huge message leaves its newest part.
    pub fn transcript(&self, limits: &Limits) -> Vec<TranscriptLine> {
        let mut left = limits.transcript_max_bytes;
        let mut lines = Vec::new();
        for mut line in self.history.iter().rev().filter_map(transcript_line) {
            let cost = line.text.len() + TRANSCRIPT_LINE_OVERHEAD;
            if cost <= left {
                left -= cost;
                lines.push(line);
                continue;
            }
            let room = left.saturating_sub(TRANSCRIPT_LINE_OVERHEAD + '…'.len_utf8());
            if room > 0 {
                let mut cut = line.text.len() - room;
                while !line.text.is_char_boundary(cut) {
                    cut += 1;
                }
                line.text = format!("…{}", &line.text[cut..]);
                lines.push(line);
            }
            break;
        }
        lines.reverse();
        lines
    }

    /// The last `ai_history` lines before seq `before` (the first message the call answers, which
    /// goes in the call's `message`, not again in its history), read from the newest back: each AI
    /// call pays for the context it sends, not for the whole kept history.
    fn ai_context(&self, limits: &Limits, before: u64) -> Vec<TranscriptLine> {
        let mut lines: Vec<_> = self
            .history
            .iter()
            .rev()
            .filter(|f| f.seq().is_some_and(|s| s < before))
            .filter_map(transcript_line)
            .take(limits.ai_history)
            .collect();
        lines.reverse();
        lines
    }

    /// Counts a ticket against `sessions.tickets_per_hour`; `false`: the budget is spent.
    pub fn take_ticket(&mut self, per_hour: u32, now: DateTime<Utc>) -> bool {
        let hour_ago = now - chrono::Duration::hours(1);
        while self.tickets.opened.front().is_some_and(|t| *t <= hour_ago) {
            self.tickets.opened.pop_front();
        }
        if self.tickets.opened.len() >= per_hour as usize {
            return false;
        }
        self.tickets.opened.push_back(now);
        true
    }

    /// The customer asks for a human: the chat is queued as when the AI hands it off. Asked while
    /// queued or held by an agent, nothing changes.
    pub fn customer_handoff(
        &mut self,
        limits: &Limits,
        reason: String,
    ) -> Result<Vec<Effect>, HandoffRefused> {
        if self.is_closed() {
            return Err(HandoffRefused::Closed);
        }
        Ok(self.queue(limits, reason))
    }

    /// Applies a customer message (once per `client_id`).
    pub fn customer_message(
        &mut self,
        limits: &Limits,
        client_id: String,
        text: String,
        now: DateTime<Utc>,
    ) -> Accepted {
        if self.is_closed() {
            return Accepted::Closed;
        }
        if let Some(seq) = self.seen(&Sender::Customer, &client_id) {
            return Accepted::Duplicate { seq };
        }
        // Kept for resume and transcripts; the sender's own connection gets the ack instead.
        self.message(
            limits,
            Author::Customer,
            text.clone(),
            Some(client_id.clone()),
            now,
        );
        let seq = self.last_seq();
        self.remember(limits, Sender::Customer, client_id, seq);
        let mut effects = Vec::new();
        if self.owner.is_ai() {
            let message_id = MessageId::new();
            if self.ai.in_flight.is_some() {
                self.ai.waiting.push((message_id, text, seq));
            } else {
                effects.push(Effect::CallAi(self.start_ai(limits, message_id, text, seq)));
            }
        }
        Accepted::New { seq, effects }
    }

    /// A call answering the customer's messages from seq `first` on.
    fn start_ai(
        &mut self,
        limits: &Limits,
        message_id: MessageId,
        text: String,
        first: u64,
    ) -> AiCall {
        self.ai.in_flight = Some(message_id);
        self.ai.from = first;
        AiCall {
            message_id,
            text,
            history: self.ai_context(limits, first),
        }
    }

    /// The next call, for the messages sent while the last one was out (joined in order).
    fn next_ai(&mut self, limits: &Limits) -> Option<Effect> {
        self.ai.in_flight = None;
        if self.ai.waiting.is_empty() || !self.owner.is_ai() {
            self.ai.waiting.clear();
            return None;
        }
        let waiting = std::mem::take(&mut self.ai.waiting);
        let message_id = waiting.last().map(|(id, _, _)| *id)?;
        let first = waiting.first().map_or(0, |(_, _, seq)| *seq);
        let text = waiting
            .into_iter()
            .map(|(_, t, _)| t)
            .collect::<Vec<_>>()
            .join("\n");
        Some(Effect::CallAi(
            self.start_ai(limits, message_id, text, first),
        ))
    }

    /// The AI answered the call for `message_id`: its reply, then its actions, then the next call.
    /// An answer to a call that is no longer awaited (the session closed or moved on) is dropped.
    pub fn ai_replied(
        &mut self,
        limits: &Limits,
        message_id: MessageId,
        reply: String,
        actions: Vec<AiAction>,
        handoff: bool,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        if self.ai.in_flight != Some(message_id) || !self.owner.is_ai() {
            return Vec::new();
        }
        let mut effects = Vec::new();
        if !reply.trim().is_empty() {
            effects.push(Effect::Send(self.message(
                limits,
                Author::Ai,
                reply,
                None,
                now,
            )));
        }
        let mut actions = actions;
        if handoff
            && !actions
                .iter()
                .any(|a| matches!(a, AiAction::Handoff { .. }))
        {
            actions.push(AiAction::Handoff {
                reason: "the assistant asked for a human".into(),
            });
        }
        for action in actions {
            effects.extend(self.act(limits, action, now));
        }
        effects.extend(self.next_ai(limits));
        effects
    }

    /// The AI call for `message_id` failed (Django slow, down, or answering garbage): the customer
    /// is told, never left in silence, and the next call goes out if messages wait.
    pub fn ai_failed(
        &mut self,
        limits: &Limits,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        if self.ai.in_flight != Some(message_id) || !self.owner.is_ai() {
            return Vec::new();
        }
        let mut effects = vec![Effect::Send(self.fallback(
            limits,
            AI_UNAVAILABLE.to_string(),
            now,
        ))];
        effects.extend(self.next_ai(limits));
        effects
    }

    /// Carries out an AI action, or proposes it when it needs the customer's word.
    fn act(&mut self, limits: &Limits, action: AiAction, now: DateTime<Utc>) -> Vec<Effect> {
        if action == AiAction::Unknown {
            return Vec::new();
        }
        if action.requires_confirmation() {
            let Some((proposed, summary)) = action.proposal() else {
                return Vec::new();
            };
            let action_id = Uuid::new_v4();
            self.pending.push(Pending { action_id, action });
            let frame = self.record(limits, |seq| ServerFrame::ActionProposed {
                seq,
                action_id,
                action: proposed,
                summary,
            });
            return vec![Effect::Send(frame)];
        }
        self.run(limits, Uuid::new_v4(), action, now)
    }

    fn run(
        &mut self,
        limits: &Limits,
        action_id: Uuid,
        action: AiAction,
        _now: DateTime<Utc>,
    ) -> Vec<Effect> {
        match action {
            AiAction::CreateTicket {
                subject,
                description,
                priority,
                ..
            } => vec![Effect::CreateTicket {
                subject,
                description,
                priority,
            }],
            AiAction::ManageService {
                service,
                operation,
                params,
                ..
            } => vec![Effect::RunService {
                action_id,
                service,
                operation,
                params,
            }],
            AiAction::Handoff { reason } => self.queue(limits, reason),
            AiAction::Unknown => Vec::new(),
        }
    }

    /// Moves the session to the queue for a human agent; the AI stops answering.
    fn queue(&mut self, limits: &Limits, reason: String) -> Vec<Effect> {
        if !self.owner.is_ai() {
            return Vec::new();
        }
        let event = OwnerEvent::Handoff {
            reason: reason.clone(),
        };
        if self.set_owner(event, AfterLeave::Ai).is_err() {
            return Vec::new();
        }
        self.ai.waiting.clear();
        self.queued_frames(limits, reason)
    }

    fn queued_frames(&mut self, limits: &Limits, reason: String) -> Vec<Effect> {
        let frame = self.record(limits, |seq| ServerFrame::Queued {
            seq,
            reason: reason.clone(),
        });
        vec![Effect::Send(frame), Effect::Enqueue { reason }]
    }

    /// An agent takes the session: a reply the AI still owes is dropped, its proposals lapse, and
    /// the customer is told who joined. Claiming a session one already holds changes nothing.
    pub fn claim(&mut self, limits: &Limits, agent: AgentRef) -> Result<Vec<Effect>, Refused> {
        if self.owner.agent().is_some_and(|a| a.id == agent.id) {
            return Ok(Vec::new());
        }
        self.set_owner(OwnerEvent::Claim(agent.clone()), AfterLeave::Ai)?;
        self.ai = AiTurn::default();
        self.pending.clear();
        let frame = self.record(limits, |seq| ServerFrame::AgentJoined {
            seq,
            name: agent.name,
        });
        Ok(vec![Effect::Send(frame)])
    }

    /// The agent holding the session left it (`lost`: they are gone, not by choice). The customer
    /// is told; the AI answers again or the session waits for another agent.
    pub fn release(
        &mut self,
        limits: &Limits,
        agent: &AgentId,
        lost: bool,
        after_leave: AfterLeave,
    ) -> Result<Vec<Effect>, Refused> {
        let name = match self.owner.agent() {
            Some(a) if a.id == *agent => a.name.clone(),
            _ if self.is_closed() => return Err(Refused::Closed),
            _ => return Err(Refused::NotOwner),
        };
        let event = if lost {
            OwnerEvent::AgentLost(agent.clone())
        } else {
            OwnerEvent::Leave(agent.clone())
        };
        self.set_owner(event, after_leave)?;
        let mut effects = vec![Effect::Send(
            self.record(limits, |seq| ServerFrame::AgentLeft { seq, name }),
        )];
        if let Owner::Queued { reason } = &self.owner {
            let reason = reason.clone();
            effects.extend(self.queued_frames(limits, reason));
        }
        Ok(effects)
    }

    /// A message from the agent holding the session, once per `client_id`.
    pub fn agent_message(
        &mut self,
        limits: &Limits,
        agent: &AgentId,
        client_id: String,
        text: String,
        now: DateTime<Utc>,
    ) -> Result<Accepted, Refused> {
        let name = match self.owner.agent() {
            Some(a) if a.id == *agent => a.name.clone(),
            _ if self.is_closed() => return Err(Refused::Closed),
            _ => return Err(Refused::NotOwner),
        };
        let sender = Sender::Agent(agent.clone());
        if let Some(seq) = self.seen(&sender, &client_id) {
            return Ok(Accepted::Duplicate { seq });
        }
        let frame = self.record(limits, |seq| ServerFrame::Message {
            seq,
            from: Author::Agent,
            text,
            at: now,
            client_id: Some(client_id.clone()),
            name: Some(name),
            offers: Vec::new(),
        });
        let seq = self.last_seq();
        self.remember(limits, sender, client_id, seq);
        Ok(Accepted::New {
            seq,
            effects: vec![Effect::Send(frame)],
        })
    }

    /// The seq a message of `sender` with `client_id` got, if it is remembered.
    fn seen(&self, sender: &Sender, client_id: &str) -> Option<u64> {
        self.recent
            .iter()
            .find(|(s, id, _)| s == sender && id == client_id)
            .map(|(_, _, seq)| *seq)
    }

    fn remember(&mut self, limits: &Limits, sender: Sender, client_id: String, seq: u64) {
        self.recent.push_back((sender, client_id, seq));
        while self.recent.len() > limits.dedupe_max.max(1) {
            self.recent.pop_front();
        }
    }

    /// The customer accepted or declined a proposed action. `None`: no such action is pending.
    pub fn confirm(
        &mut self,
        limits: &Limits,
        action_id: Uuid,
        accept: bool,
        now: DateTime<Utc>,
    ) -> Option<Vec<Effect>> {
        let at = self.pending.iter().position(|p| p.action_id == action_id)?;
        let pending = self.pending.remove(at);
        if !accept {
            let text = "Understood, nothing was done.".to_string();
            return Some(vec![Effect::Send(self.system(limits, text, now))]);
        }
        Some(self.run(limits, pending.action_id, pending.action, now))
    }

    /// A ticket was created from this chat: the customer sees it.
    pub fn ticket_created(
        &mut self,
        limits: &Limits,
        ticket_id: crate::domain::ids::TicketId,
    ) -> ServerFrame {
        self.record(limits, |seq| ServerFrame::TicketCreated { seq, ticket_id })
    }

    /// Ends the session: the last frame, then close.
    pub fn close(&mut self, limits: &Limits, reason: CloseReason) -> Vec<Effect> {
        if self.set_owner(OwnerEvent::Close, AfterLeave::Ai).is_err() {
            return Vec::new();
        }
        self.ai = AiTurn::default();
        self.pending.clear();
        let frame = self.record(limits, |seq| ServerFrame::Closed { seq, reason });
        vec![Effect::Send(frame), Effect::Close(reason)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        history_max: 8,
        history_max_bytes: usize::MAX,
        transcript_max_bytes: usize::MAX,
        dedupe_max: 4,
        ai_history: 3,
    };

    fn session() -> SessionState {
        SessionState::new(
            SessionId::new(),
            hash_token("token"),
            CustomerInfo {
                id: "anonymous".into(),
                name: "Visitor".into(),
                email: String::new(),
                known: false,
            },
            Utc::now(),
        )
    }

    fn ai_call(effects: &[Effect]) -> Option<AiCall> {
        effects.iter().find_map(|e| match e {
            Effect::CallAi(c) => Some(c.clone()),
            _ => None,
        })
    }

    fn new(a: Accepted) -> (u64, Vec<Effect>) {
        match a {
            Accepted::New { seq, effects } => (seq, effects),
            other => panic!("expected a new message, got {other:?}"),
        }
    }

    #[test]
    fn a_client_id_is_applied_once_and_acked_with_the_same_seq() {
        let mut s = session();
        let (seq, effects) = new(s.customer_message(&LIMITS, "c1".into(), "hi".into(), Utc::now()));
        assert_eq!(seq, 1);
        assert!(ai_call(&effects).is_some());
        assert_eq!(
            s.customer_message(&LIMITS, "c1".into(), "hi".into(), Utc::now()),
            Accepted::Duplicate { seq: 1 }
        );
        assert_eq!(s.last_seq(), 1, "a duplicate adds nothing");
    }

    #[test]
    fn one_ai_call_at_a_time_and_messages_sent_meanwhile_go_into_the_next() {
        let mut s = session();
        let (_, e1) = new(s.customer_message(&LIMITS, "c1".into(), "first".into(), Utc::now()));
        let call1 = ai_call(&e1).unwrap();
        let (_, e2) = new(s.customer_message(&LIMITS, "c2".into(), "second".into(), Utc::now()));
        let (_, e3) = new(s.customer_message(&LIMITS, "c3".into(), "third".into(), Utc::now()));
        assert!(
            ai_call(&e2).is_none() && ai_call(&e3).is_none(),
            "one call in flight"
        );

        let after = s.ai_replied(
            &LIMITS,
            call1.message_id,
            "answer 1".into(),
            vec![],
            false,
            Utc::now(),
        );
        let reply_seq = after.iter().find_map(|e| match e {
            Effect::Send(ServerFrame::Message {
                seq,
                from: Author::Ai,
                ..
            }) => Some(*seq),
            _ => None,
        });
        assert_eq!(reply_seq, Some(4), "the reply follows the three messages");
        let call2 = ai_call(&after).expect("the waiting messages go out next");
        assert_eq!(call2.text, "second\nthird");
        assert!(call2.history.len() <= LIMITS.ai_history);

        // A late answer to the first call is not awaited any more.
        assert!(s
            .ai_replied(
                &LIMITS,
                call1.message_id,
                "again".into(),
                vec![],
                false,
                Utc::now()
            )
            .is_empty());
    }

    #[test]
    fn a_failed_ai_call_tells_the_customer() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "hello".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        let effects = s.ai_failed(&LIMITS, call.message_id, Utc::now());
        assert!(matches!(
            &effects[0],
            Effect::Send(ServerFrame::Message { from: Author::System, text, .. }) if text == AI_UNAVAILABLE
        ));
    }

    #[test]
    fn actions_run_or_wait_for_confirmation() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "reset it".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        let actions = vec![
            AiAction::ManageService {
                service: "email".into(),
                operation: "reset_password".into(),
                params: serde_json::json!({}),
                requires_confirmation: true,
            },
            AiAction::CreateTicket {
                subject: "Broken".into(),
                description: String::new(),
                priority: Priority::High,
                requires_confirmation: false,
            },
        ];
        let effects = s.ai_replied(
            &LIMITS,
            call.message_id,
            "ok".into(),
            actions,
            false,
            Utc::now(),
        );
        let proposed = effects.iter().find_map(|e| match e {
            Effect::Send(ServerFrame::ActionProposed { action_id, .. }) => Some(*action_id),
            _ => None,
        });
        let action_id = proposed.expect("the service action waits for the customer");
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::CreateTicket {
                priority: Priority::High,
                ..
            }
        )));
        assert!(!effects
            .iter()
            .any(|e| matches!(e, Effect::RunService { .. })));

        let run = s.confirm(&LIMITS, action_id, true, Utc::now()).unwrap();
        assert!(matches!(&run[0], Effect::RunService { service, .. } if service == "email"));
        assert!(
            s.confirm(&LIMITS, action_id, true, Utc::now()).is_none(),
            "only once"
        );
    }

    #[test]
    fn handoff_queues_the_session_and_silences_the_ai() {
        let mut s = session();
        let (_, e) =
            new(s.customer_message(&LIMITS, "c1".into(), "human please".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        let effects = s.ai_replied(
            &LIMITS,
            call.message_id,
            "Sure.".into(),
            vec![],
            true,
            Utc::now(),
        );
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Send(ServerFrame::Queued { .. }))));
        assert!(s.owner.is_queued());
        let (_, later) = new(s.customer_message(&LIMITS, "c2".into(), "hello?".into(), Utc::now()));
        assert!(ai_call(&later).is_none(), "no AI while queued");
    }

    /// What the journal would hold: the record and every numbered frame.
    fn journaled(s: &SessionState) -> SessionState {
        let frames = s.frames_after(0);
        SessionState::restore(&LIMITS, &s.to_record(), s.last_seq(), frames).unwrap()
    }

    #[test]
    fn a_token_hash_reads_back_from_its_hex() {
        let h = hash_token("token");
        assert_eq!(h.to_hex().len(), 64);
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }

    #[test]
    fn the_state_comes_back_from_its_record_and_frames() {
        let mut s = session();
        new(s.customer_message(&LIMITS, "c1".into(), "hi".into(), Utc::now()));
        let mut back = journaled(&s);
        assert_eq!(back.last_seq(), 1);
        assert_eq!(back.transcript(&LIMITS), s.transcript(&LIMITS));
        assert!(
            !s.to_record().contains("\"hi\""),
            "the record holds no frames"
        );
        assert_eq!(
            back.customer_message(&LIMITS, "c1".into(), "hi".into(), Utc::now()),
            Accepted::Duplicate { seq: 1 },
            "remembered client_ids come back from the frames"
        );
        assert!(back.token_matches("token") && !back.token_matches("other"));
    }

    #[test]
    fn an_ai_answer_owed_is_asked_again_with_the_same_message_id_and_messages() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "first".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        new(s.customer_message(&LIMITS, "c2".into(), "second".into(), Utc::now()));
        let back = journaled(&s);
        let again = back.pending_ai_call(&LIMITS).unwrap();
        assert_eq!(again.message_id, call.message_id);
        assert_eq!(
            again.text, "first",
            "the waiting message goes in the next call"
        );
        assert!(back.needs_actor());
        let mut idle = session();
        assert!(idle.pending_ai_call(&LIMITS).is_none() && !idle.needs_actor());
        let (_, e) = new(idle.customer_message(&LIMITS, "c1".into(), "x".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        idle.ai_failed(&LIMITS, call.message_id, Utc::now());
        assert!(!journaled(&idle).needs_actor());
    }

    #[test]
    fn agents_and_customers_dedupe_in_their_own_key_spaces() {
        let mut s = session();
        s.claim(&LIMITS, agent("a")).unwrap();
        let seq_a = match s
            .agent_message(
                &LIMITS,
                &AgentId::from("a"),
                "x-1".into(),
                "from A".into(),
                Utc::now(),
            )
            .unwrap()
        {
            Accepted::New { seq, .. } => seq,
            other => panic!("{other:?}"),
        };
        // The customer using the agent's id (or the old `agent:` prefix) is a new message.
        let (c1, _) = new(s.customer_message(&LIMITS, "x-1".into(), "me".into(), Utc::now()));
        let (c2, _) =
            new(s.customer_message(&LIMITS, "agent:x-2".into(), "me too".into(), Utc::now()));
        assert!(c1 > seq_a && c2 > c1);
        // Agent B, after A left, sending A's client_id is a new message and reaches the customer.
        s.release(&LIMITS, &AgentId::from("a"), false, AfterLeave::Requeue)
            .unwrap();
        s.claim(&LIMITS, agent("b")).unwrap();
        let Accepted::New {
            seq: seq_b,
            effects,
        } = s
            .agent_message(
                &LIMITS,
                &AgentId::from("b"),
                "x-1".into(),
                "from B".into(),
                Utc::now(),
            )
            .unwrap()
        else {
            panic!("agent B's message must be new");
        };
        assert!(seq_b > c2);
        assert!(
            matches!(&effects[0], Effect::Send(ServerFrame::Message { text, .. }) if text == "from B")
        );
        // The customer's agent-looking id does not swallow the agent's next message either.
        assert!(matches!(
            s.agent_message(
                &LIMITS,
                &AgentId::from("b"),
                "x-2".into(),
                "again B".into(),
                Utc::now()
            ),
            Ok(Accepted::New { .. })
        ));
    }

    #[test]
    fn the_ai_history_holds_neither_system_notes_nor_the_message_it_answers() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "first".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        assert!(
            call.history.is_empty(),
            "the answered message is the call's `message`"
        );
        s.ai_failed(&LIMITS, call.message_id, Utc::now());
        let (_, e) = new(s.customer_message(&LIMITS, "c2".into(), "second".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        assert_eq!(call.text, "second");
        let texts: Vec<_> = call.history.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["first"], "no system note, no repeat of `second`");
        assert!(s
            .transcript(&LIMITS)
            .iter()
            .all(|l| l.role != ChatRole::System));
    }

    #[test]
    fn the_transcript_copy_keeps_the_newest_lines_within_its_budget() {
        let mut s = session();
        let limits = Limits {
            transcript_max_bytes: 3 * (100 + TRANSCRIPT_LINE_OVERHEAD),
            ..LIMITS
        };
        for i in 0..6 {
            let text = format!("{i}").repeat(100);
            s.customer_message(&limits, format!("c{i}"), text, Utc::now());
        }
        let t = s.transcript(&limits);
        assert_eq!(t.len(), 3);
        assert!(t[0].text.starts_with('3') && t[2].text.starts_with('5'));
        // One line larger than the whole budget keeps its newest part.
        let tight = Limits {
            transcript_max_bytes: 50 + TRANSCRIPT_LINE_OVERHEAD,
            ..LIMITS
        };
        let t = s.transcript(&tight);
        assert_eq!(t.len(), 1);
        assert!(t[0].text.starts_with('…') && t[0].text.len() <= 50);
    }

    #[test]
    fn tickets_per_hour_are_counted_in_a_sliding_hour() {
        let mut s = session();
        let t0 = Utc::now();
        assert!(s.take_ticket(2, t0));
        assert!(s.take_ticket(2, t0 + chrono::Duration::minutes(1)));
        assert!(!s.take_ticket(2, t0 + chrono::Duration::minutes(59)));
        assert!(s.take_ticket(2, t0 + chrono::Duration::minutes(61)));
    }

    #[test]
    fn a_customer_can_ask_for_a_human_and_failures_offer_one() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "hello".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        let failed = s.ai_failed(&LIMITS, call.message_id, Utc::now());
        assert!(matches!(
            &failed[0],
            Effect::Send(ServerFrame::Message { offers, .. }) if offers == &FALLBACK_OFFERS
        ));
        let effects = s
            .customer_handoff(&LIMITS, "wants a person".into())
            .unwrap();
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::Enqueue { reason } if reason == "wants a person")));
        assert!(s.owner.is_queued());
        assert!(
            s.customer_handoff(&LIMITS, "again".into())
                .unwrap()
                .is_empty(),
            "already queued"
        );
        s.close(&LIMITS, CloseReason::CustomerClosed);
        assert_eq!(
            s.customer_handoff(&LIMITS, "late".into()),
            Err(HandoffRefused::Closed)
        );
    }

    #[test]
    fn close_is_final() {
        let mut s = session();
        let effects = s.close(&LIMITS, CloseReason::CustomerClosed);
        assert!(matches!(
            effects[1],
            Effect::Close(CloseReason::CustomerClosed)
        ));
        assert!(s.close(&LIMITS, CloseReason::IdleTimeout).is_empty());
        assert_eq!(
            s.customer_message(&LIMITS, "c9".into(), "x".into(), Utc::now()),
            Accepted::Closed
        );
    }

    fn agent(id: &str) -> AgentRef {
        AgentRef {
            id: AgentId::from(id),
            name: format!("Agent {id}"),
        }
    }

    #[test]
    fn a_claim_discards_the_reply_the_ai_still_owes_and_silences_it() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "help".into(), Utc::now()));
        let call = ai_call(&e).unwrap();
        let joined = s.claim(&LIMITS, agent("a")).unwrap();
        assert!(matches!(
            &joined[0],
            Effect::Send(ServerFrame::AgentJoined { name, .. }) if name == "Agent a"
        ));
        let late = s.ai_replied(
            &LIMITS,
            call.message_id,
            "too late".into(),
            vec![],
            false,
            Utc::now(),
        );
        assert!(
            late.is_empty(),
            "the late AI reply must not reach the customer"
        );
        assert!(s.ai_failed(&LIMITS, call.message_id, Utc::now()).is_empty());
        let (_, e) = new(s.customer_message(&LIMITS, "c2".into(), "hi?".into(), Utc::now()));
        assert!(e.is_empty(), "no AI call while an agent holds the session");
    }

    #[test]
    fn after_a_leave_the_ai_answers_again_without_its_old_call() {
        let mut s = session();
        let (_, e) = new(s.customer_message(&LIMITS, "c1".into(), "help".into(), Utc::now()));
        let old = ai_call(&e).unwrap();
        s.claim(&LIMITS, agent("a")).unwrap();
        let left = s
            .release(&LIMITS, &AgentId::from("a"), false, AfterLeave::Ai)
            .unwrap();
        assert!(matches!(
            &left[0],
            Effect::Send(ServerFrame::AgentLeft { .. })
        ));
        assert!(s.owner.is_ai());
        assert!(
            s.ai_replied(
                &LIMITS,
                old.message_id,
                "stale".into(),
                vec![],
                false,
                Utc::now()
            )
            .is_empty(),
            "a call made before the claim stays discarded"
        );
        let (_, e) = new(s.customer_message(&LIMITS, "c2".into(), "again".into(), Utc::now()));
        assert!(ai_call(&e).is_some());
    }

    #[test]
    fn a_lost_agent_puts_the_session_back_in_the_queue() {
        let mut s = session();
        s.claim(&LIMITS, agent("a")).unwrap();
        let effects = s
            .release(&LIMITS, &AgentId::from("a"), true, AfterLeave::Ai)
            .unwrap();
        assert!(effects.iter().any(|e| matches!(e, Effect::Enqueue { .. })));
        assert!(s.owner.is_queued());
        assert_eq!(
            s.release(&LIMITS, &AgentId::from("a"), true, AfterLeave::Ai),
            Err(Refused::NotOwner)
        );
    }

    #[test]
    fn agent_messages_are_numbered_named_and_applied_once() {
        let mut s = session();
        assert_eq!(
            s.agent_message(
                &LIMITS,
                &AgentId::from("a"),
                "m1".into(),
                "x".into(),
                Utc::now()
            ),
            Err(Refused::NotOwner)
        );
        s.claim(&LIMITS, agent("a")).unwrap();
        let sent = s
            .agent_message(
                &LIMITS,
                &AgentId::from("a"),
                "m1".into(),
                "Hello".into(),
                Utc::now(),
            )
            .unwrap();
        let Accepted::New { seq, effects } = sent else {
            panic!("expected a new message")
        };
        assert!(matches!(
            &effects[0],
            Effect::Send(ServerFrame::Message { from: Author::Agent, name: Some(n), .. }) if n == "Agent a"
        ));
        assert_eq!(
            s.agent_message(
                &LIMITS,
                &AgentId::from("a"),
                "m1".into(),
                "Hello".into(),
                Utc::now()
            ),
            Ok(Accepted::Duplicate { seq })
        );
        assert_eq!(
            s.agent_message(
                &LIMITS,
                &AgentId::from("b"),
                "m2".into(),
                "Hi".into(),
                Utc::now()
            ),
            Err(Refused::NotOwner),
            "another agent cannot write into it"
        );
    }
}
