//! What one turn of a thread's event loop produced, handed on in one go.
//!
//! A [`TurnBatch`] collects the items pushed while the thread's tasks run, and delivers them
//! together once those tasks have yielded and the thread's I/O has been polled. Sending the batch
//! to another thread then costs one message and at most one wake-up of that thread, however many
//! items it holds. Used on both ends of the AI lane ([`super::port`]).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Items pushed during one turn of this thread's loop, delivered together at its end.
pub struct TurnBatch<T> {
    items: RefCell<Vec<T>>,
    scheduled: Cell<bool>,
    deliver: Box<dyn Fn(Vec<T>)>,
}

impl<T: 'static> TurnBatch<T> {
    pub fn new(deliver: impl Fn(Vec<T>) + 'static) -> Rc<Self> {
        Rc::new(Self {
            items: RefCell::new(Vec::new()),
            scheduled: Cell::new(false),
            deliver: Box::new(deliver),
        })
    }

    /// Adds `item` to this turn's batch; the first item of a turn schedules the delivery. Must run
    /// inside an actix arbiter or system (the delivery is a task on this thread).
    pub fn push(self: &Rc<Self>, item: T) {
        self.items.borrow_mut().push(item);
        if !self.scheduled.replace(true) {
            let batch = self.clone();
            actix::spawn(async move {
                // Deferred past the tasks already ready and the next poll of the thread's I/O, so
                // everything that turn produces joins this batch.
                tokio::task::yield_now().await;
                batch.flush();
            });
        }
    }

    /// Delivers what has been pushed, if anything.
    fn flush(&self) {
        self.scheduled.set(false);
        let items = std::mem::take(&mut *self.items.borrow_mut());
        if !items.is_empty() {
            (self.deliver)(items);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits (yielding to the delivery task) until `n` batches were delivered.
    async fn delivered_count(delivered: &RefCell<Vec<Vec<u32>>>, n: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while delivered.borrow().len() < n {
                tokio::task::yield_now().await;
            }
        });
        waited.await.expect("the batch is delivered");
    }

    #[actix::test]
    async fn items_of_one_turn_are_delivered_together_and_in_order() {
        let delivered: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
        let seen = delivered.clone();
        let batch = TurnBatch::new(move |items| seen.borrow_mut().push(items));
        batch.push(1);
        batch.push(2);
        batch.push(3);
        assert!(
            delivered.borrow().is_empty(),
            "nothing is delivered mid-turn"
        );
        delivered_count(&delivered, 1).await;
        assert_eq!(*delivered.borrow(), vec![vec![1, 2, 3]]);
        batch.push(4);
        delivered_count(&delivered, 2).await;
        assert_eq!(*delivered.borrow(), vec![vec![1, 2, 3], vec![4]]);
    }
}
