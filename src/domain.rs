//! The domain: plain data and pure rules, below every actor, store and bridge (and importing none of
//! them). Typed ids, who acted, the ticket model and its status state machine, how a patch applies,
//! input validation, and the timestamp format every layer writes.

pub mod chat;
pub mod ids;
pub mod patch;
pub mod precondition;
pub mod principal;
pub mod secret;
pub mod status;
pub mod ticket;
pub mod timestamp;
pub mod validate;
