//! A reusable timer: one timer-wheel entry per session, moved only when its deadline
//! moves. Creating a timer per loop turn showed in profiles of the control path.

use std::future::pending;
use std::pin::Pin;

use tokio::time::{sleep_until, Instant, Sleep};

/// A deadline that can be moved without a new timer; pending forever while unset.
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            sleep: Box::pin(sleep_until(Instant::now())),
            at: None,
        }
    }
}

impl Timer {
    /// Sets the deadline (`None` disarms).
    pub fn arm(&mut self, at: Option<std::time::Instant>) {
        let at = at.map(Instant::from_std);
        if at != self.at {
            if let Some(t) = at {
                self.sleep.as_mut().reset(t);
            }
            self.at = at;
        }
    }

    /// Sets a deadline that may fire early: the timer is moved only when `at` is
    /// earlier than what is armed (or nothing is), and left alone when `at` is later
    /// or `None` — the caller re-checks when it fires and arms again. Moving a tokio
    /// timer earlier wakes the runtime's timer driver, a cross-thread unpark that
    /// showed as 30% more CPU per command when every command moved the deadline.
    pub fn arm_early(&mut self, at: Option<std::time::Instant>) {
        let Some(at) = at.map(Instant::from_std) else {
            return;
        };
        if self.at.is_none_or(|cur| at < cur) {
            self.sleep.as_mut().reset(at);
            self.at = Some(at);
        }
    }

    /// Resolves at the armed deadline; never while disarmed.
    pub async fn fired(&mut self) {
        if self.at.is_none() {
            return pending().await;
        }
        (&mut self.sleep).await;
        self.at = None;
    }
}
