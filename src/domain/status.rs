//! A ticket's status and the state machine between statuses: which change is allowed from where.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    InProgress,
    Pending,
    Resolved,
    Closed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Open,
        Self::InProgress,
        Self::Pending,
        Self::Resolved,
        Self::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::InProgress => "in_progress",
            Self::Pending => "pending",
            Self::Resolved => "resolved",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Statuses reachable from this one in a single change. `closed` is final; `resolved` may reopen.
    pub fn allowed_next(self) -> &'static [Status] {
        use Status::*;
        match self {
            Open => &[InProgress, Pending, Resolved, Closed],
            InProgress => &[Open, Pending, Resolved, Closed],
            Pending => &[Open, InProgress, Resolved, Closed],
            Resolved => &[Open, Closed],
            Closed => &[],
        }
    }

    pub fn can_become(self, next: Status) -> bool {
        self.allowed_next().contains(&next)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
