//! A chat session: its serializable state and rules ([`state`]).

pub mod state;
