//! What a player connection waits for besides its socket: the server
//! stopping, and its deadline (the header timeout, which is also the idle
//! timeout) passing.
//!
//! A timer and a stop channel polled beside every read cost a kept-alive
//! connection a few hundred instructions per request, for events that almost
//! never happen. Instead each player thread keeps one table of its
//! connections' deadlines and wakers. One timer per thread sweeps it a few
//! times per timeout ([`tick`]) and wakes the connections whose deadline
//! passed; stopping wakes them all. A connection's wait is a look into the
//! table. A deadline is met within one tick.
//!
//! A player thread serves one listener ([`crate::server::serve`]), so the
//! table is the thread's.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// The thread's connections, by index, and whether its server stops.
#[derive(Default)]
struct Table {
    stopping: bool,
    entries: Vec<Option<Entry>>,
    /// Indices of `entries` free for the next connection.
    free: Vec<usize>,
}

/// One connection's deadline and the waker of its wait.
struct Entry {
    deadline: Instant,
    expired: bool,
    waker: Option<Waker>,
}

/// Why a connection's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    /// The server stops.
    Stopping,
    /// The deadline passed.
    Expired,
}

/// A connection's entry in its thread's table, until dropped.
pub(crate) struct Watched {
    index: usize,
}

impl Watched {
    /// Watches a new connection, to be cut off at `deadline`.
    pub(crate) fn new(deadline: Instant) -> Watched {
        TABLE.with_borrow_mut(|table| {
            let entry = Some(Entry {
                deadline,
                expired: false,
                waker: None,
            });
            let index = match table.free.pop() {
                Some(index) => {
                    table.entries[index] = entry;
                    index
                }
                None => {
                    table.entries.push(entry);
                    table.entries.len() - 1
                }
            };
            Watched { index }
        })
    }

    /// Resolves once the deadline has passed, or, if `stop_counts` (the
    /// connection is between requests), once the server stops.
    pub(crate) fn interrupted(&self, stop_counts: bool) -> Interrupted<'_> {
        Interrupted {
            watched: self,
            stop_counts,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Gone already when the thread itself is ending.
        let _ = TABLE.try_with(|table| {
            let mut table = table.borrow_mut();
            if let Some(entry) = table.entries.get_mut(self.index) {
                *entry = None;
                table.free.push(self.index);
            }
        });
    }
}

/// [`Watched::interrupted`].
pub(crate) struct Interrupted<'a> {
    watched: &'a Watched,
    stop_counts: bool,
}

impl Future for Interrupted<'_> {
    type Output = Interruption;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Interruption> {
        TABLE.with_borrow_mut(|table| {
            if self.stop_counts && table.stopping {
                return Poll::Ready(Interruption::Stopping);
            }
            let Some(Some(entry)) = table.entries.get_mut(self.watched.index) else {
                return Poll::Ready(Interruption::Expired);
            };
            if entry.expired {
                return Poll::Ready(Interruption::Expired);
            }
            match &entry.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => entry.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

/// How often a thread's deadlines are checked for `timeout`: an eighth of
/// it, between 1 ms and 250 ms.
pub(crate) fn tick(timeout: Duration) -> Duration {
    (timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// Starts a server on this thread: the table of an earlier one is dropped.
pub(crate) fn start() {
    TABLE.with_borrow_mut(|table| *table = Table::default());
}

/// Whether the server on this thread stops: answers then close their
/// connection.
pub(crate) fn stopping() -> bool {
    TABLE.with_borrow(|table| table.stopping)
}

/// The server on this thread stops: every waiting connection is woken.
pub(crate) fn stop() {
    let wakers: Vec<Waker> = TABLE.with_borrow_mut(|table| {
        table.stopping = true;
        table
            .entries
            .iter_mut()
            .flatten()
            .filter_map(|entry| entry.waker.take())
            .collect()
    });
    wakers.into_iter().for_each(Waker::wake);
}

/// Every `tick`, marks the connections whose deadline passed and wakes
/// them; runs until the thread's runtime ends.
pub(crate) async fn sweep(tick: Duration) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let wakers: Vec<Waker> = TABLE.with_borrow_mut(|table| {
            table
                .entries
                .iter_mut()
                .flatten()
                .filter(|entry| !entry.expired && entry.deadline <= now)
                .filter_map(|entry| {
                    entry.expired = true;
                    entry.waker.take()
                })
                .collect()
        });
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_are_met_within_a_tick_and_stopping_wakes_the_waiting() {
        start();
        let timeout = Duration::from_secs(1);
        tokio::spawn(sweep(tick(timeout)));
        let started = Instant::now();
        let idle = Watched::new(started + timeout);
        assert_eq!(idle.interrupted(true).await, Interruption::Expired);
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited <= timeout + tick(timeout),
            "{waited:?}"
        );

        // Stopping ends the wait of a connection between requests, not of one
        // whose request is still arriving.
        let between = Watched::new(Instant::now() + timeout);
        let mid_head = Watched::new(Instant::now() + timeout);
        let waiting = async { between.interrupted(true).await };
        let stopper = async {
            tokio::time::sleep(timeout / 4).await;
            stop();
        };
        let (why, ()) = tokio::join!(waiting, stopper);
        assert_eq!(why, Interruption::Stopping);
        assert!(stopping());
        assert_eq!(mid_head.interrupted(false).await, Interruption::Expired);

        // Entries are reused once dropped.
        let index = between.index;
        drop(between);
        assert_eq!(Watched::new(Instant::now()).index, index);
        start();
        assert!(!stopping());
    }
}
