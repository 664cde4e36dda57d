//! The hand-off between a disk stream and its writer thread: records are
//! encoded straight into the open commit batch, and the writer takes whole
//! batches, each one `write` and one `fdatasync`, then wakes the batch's
//! waiters with one cross-thread wake-up.
//!
//! Publishers append under the stream's lock (so records are in sequence
//! order), then this queue's lock, held only for the append. The writer
//! holds the queue's lock only to take a batch, never while it writes.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

use super::stream::lock;
use crate::backend::BusError;
use crate::subject::Subject;

/// A message record in a batch, to enter the index once it is durable.
pub(crate) struct BatchEntry {
    pub seq: u64,
    pub subject: Subject,
    pub time_ns: u64,
    /// Byte offset of the record within the batch.
    pub offset: usize,
    pub len: u32,
}

/// One commit batch: everything written and synced together.
#[derive(Default)]
pub(crate) struct Batch {
    /// Encoded records, in sequence order.
    pub bytes: Vec<u8>,
    /// The message records among them.
    pub entries: Vec<BatchEntry>,
    /// Consumers whose state files are deleted after the batch is durable.
    pub delete_consumers: Vec<String>,
    /// Completed once the batch is durable (or failed). A submission may
    /// carry no bytes (a consumer-state sync): the batch is still committed.
    pub waiters: Vec<oneshot::Sender<Completion>>,
}

impl Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
        self.delete_consumers.clear();
        self.waiters.clear();
    }
}

struct Inner {
    /// Batches waiting for the writer, oldest first; only the last one
    /// takes more submissions, until it holds `max_batch_bytes`.
    batches: VecDeque<Batch>,
    /// Emptied batches handed back by the writer, reused for their buffers.
    spare: Vec<Batch>,
    /// No more submissions: the writer exits once the queue is drained.
    closed: bool,
    /// The writer is waiting on `wake`.
    writer_waiting: bool,
}

/// The queue of one disk stream.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    wake: Condvar,
    max_batch_bytes: usize,
}

impl Queue {
    pub fn new(max_batch_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                batches: VecDeque::new(),
                spare: Vec::new(),
                closed: false,
                writer_waiting: false,
            }),
            wake: Condvar::new(),
            max_batch_bytes,
        })
    }

    /// Adds a submission to the open batch: `fill` appends to it (and
    /// what it appended is taken out again if it fails). Returns a
    /// receiver completed when the batch is durable, if `wait`.
    pub fn submit(
        &self,
        stream: &str,
        fill: impl FnOnce(&mut Batch) -> Result<(), BusError>,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Completion>>, BusError> {
        let mut q = lock(&self.inner);
        if q.closed {
            return Err(BusError::Closed {
                stream: stream.to_owned(),
            });
        }
        let open = q
            .batches
            .back()
            .is_some_and(|b| b.bytes.len() < self.max_batch_bytes);
        if !open {
            let batch = q.spare.pop().unwrap_or_default();
            q.batches.push_back(batch);
        }
        let Some(batch) = q.batches.back_mut() else {
            return Err(BusError::Closed {
                stream: stream.to_owned(),
            });
        };
        let (bytes, entries, deletes) = (
            batch.bytes.len(),
            batch.entries.len(),
            batch.delete_consumers.len(),
        );
        if let Err(e) = fill(batch) {
            batch.bytes.truncate(bytes);
            batch.entries.truncate(entries);
            batch.delete_consumers.truncate(deletes);
            return Err(e);
        }
        let rx = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            batch.waiters.push(tx);
            rx
        });
        if q.writer_waiting {
            q.writer_waiting = false;
            self.wake.notify_one();
        }
        Ok(rx)
    }

    /// The writer's side: the oldest batch, waiting for one; `None` once
    /// the queue is closed and drained.
    pub fn take(&self) -> Option<Batch> {
        let mut q = lock(&self.inner);
        loop {
            if let Some(b) = q.batches.pop_front() {
                return Some(b);
            }
            if q.closed {
                return None;
            }
            q.writer_waiting = true;
            q = self
                .wake
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Hands an emptied batch back for reuse.
    pub fn recycle(&self, mut batch: Batch) {
        // Keep buffers up to the batch limit; drop unusually large ones.
        if batch.bytes.capacity() > 2 * self.max_batch_bytes {
            return;
        }
        batch.clear();
        let mut q = lock(&self.inner);
        if q.spare.len() < 2 {
            q.spare.push(batch);
        }
    }

    /// Refuses further submissions; the writer drains what is queued, then
    /// stops.
    pub fn close(&self) {
        lock(&self.inner).closed = true;
        self.wake.notify_all();
    }
}

/// The stream's handle on its queue: closes it when dropped (stream closed
/// or gone), so the writer thread stops.
pub(crate) struct QueueTx(pub Arc<Queue>);

impl Drop for QueueTx {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the writer sends when a commit batch is durable (or failed).
///
/// The writer thread hands the outcome to one waiter of the batch only,
/// together with the senders of all the others, and that waiter passes it
/// on (see [`Completion::fan_out`]). A wake-up sent from the writer thread
/// is a cross-thread wake-up of a runtime worker (the runtime's injection
/// queue, often a futex or eventfd call, and the woken worker preempting
/// the writer); sent from a task already running on a worker it is a push
/// onto that worker's run queue. With 256 publishers (`weft bench bus`) the
/// per-waiter wake-ups took about a third of the writer thread's time, all
/// of it before the next batch could start.
///
/// Dropping a `Completion` passes it on too, so a waiter whose future was
/// cancelled after the writer picked it never strands the rest.
pub(crate) struct Completion {
    result: Result<(), BusError>,
    /// The other waiters, last first.
    rest: Vec<oneshot::Sender<Completion>>,
}

impl Completion {
    /// Delivers `result` to every waiter in `waiters`: one send from the
    /// calling thread (the writer), to the first waiter still listening.
    pub fn deliver(result: Result<(), BusError>, mut waiters: Vec<oneshot::Sender<Completion>>) {
        waiters.reverse();
        while let Some(first) = waiters.pop() {
            let c = Completion {
                result: result.clone(),
                rest: std::mem::take(&mut waiters),
            };
            match first.send(c) {
                Ok(()) => return,
                // That waiter is gone: take the rest back, try the next.
                Err(mut c) => waiters = std::mem::take(&mut c.rest),
            }
        }
    }

    /// Passes the outcome on to the rest of the batch and returns it.
    pub fn fan_out(mut self) -> Result<(), BusError> {
        self.pass_on();
        self.result.clone()
    }

    fn pass_on(&mut self) {
        while let Some(tx) = self.rest.pop() {
            let _ = tx.send(Completion {
                result: self.result.clone(),
                rest: Vec::new(),
            });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.pass_on();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn every_waiter_hears_once_even_when_some_are_gone() {
        let mut txs = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..6 {
            let (tx, rx) = oneshot::channel();
            txs.push(tx);
            rxs.push(Some(rx));
        }
        // The first two waiters were cancelled before the batch completed.
        rxs[0] = None;
        rxs[1] = None;
        Completion::deliver(Ok(()), txs);
        // The third got it with the rest; it is dropped unread (its future
        // cancelled after the send): the others must still hear.
        drop(rxs[2].take());
        for rx in rxs.into_iter().flatten() {
            assert!(rx.await.unwrap().fan_out().is_ok());
        }
    }

    #[tokio::test]
    async fn an_error_reaches_everyone() {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| oneshot::channel()).unzip();
        Completion::deliver(Err(BusError::Closed { stream: "s".into() }), txs);
        for rx in rxs {
            assert!(matches!(
                rx.await.unwrap().fan_out(),
                Err(BusError::Closed { .. })
            ));
        }
    }

    #[test]
    fn batches_split_at_the_byte_limit_and_close_drains() {
        let q = Queue::new(10);
        let six = |b: &mut Batch| {
            b.bytes.extend_from_slice(&[1; 6]);
            Ok(())
        };
        let mut waiters = Vec::new();
        for _ in 0..3 {
            waiters.push(q.submit("s", six, true).unwrap());
        }
        // A failed fill leaves nothing behind.
        let bad = q.submit(
            "s",
            |b| {
                b.bytes.push(9);
                Err(BusError::Closed { stream: "x".into() })
            },
            true,
        );
        assert!(bad.is_err());
        q.close();
        assert!(matches!(
            q.submit("s", six, false),
            Err(BusError::Closed { .. })
        ));
        let first = q.take().unwrap();
        assert_eq!((first.bytes.len(), first.waiters.len()), (12, 2));
        let second = q.take().unwrap();
        assert_eq!((second.bytes.len(), second.waiters.len()), (6, 1));
        assert!(q.take().is_none());
    }
}
