//! How the store's threads answer a caller: a write's reply waits, with its result, until its
//! transaction's fate (commit, and with `synchronous = full` the flush) is known. Shared by the writer,
//! which fills them, and the syncer, which sends them once the batch is durable.

use tokio::sync::oneshot;

use super::{CommitError, StoreError, StoreResult};

pub(super) type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// What a write did, to be replied once the transaction's fate is known.
pub(super) enum Done {
    Unit(Reply<()>, StoreResult<()>),
    Bool(Reply<bool>, StoreResult<bool>),
    Seq(Reply<i64>, StoreResult<i64>),
}

impl Done {
    /// Sends the result, or `failed` for every write when the transaction did not commit.
    pub(super) fn reply(self, failed: Option<&CommitError>) {
        let fail = |why: &CommitError| StoreError::CommitFailed(why.clone());
        match self {
            Done::Unit(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
            Done::Bool(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
            Done::Seq(tx, r) => {
                let _ = tx.send(failed.map_or(r, |why| Err(fail(why))));
            }
        }
    }
}
