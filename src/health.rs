//! What `/readyz` answers: ready only while the broker and the database are
//! connected and the daemon is not draining. Each flag has one writer (the
//! consumer, the database monitor, the shutdown path) and one reader, the
//! HTTP server.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    broker: AtomicBool,
    database: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_broker(&self, connected: bool) {
        self.broker.store(connected, Ordering::Relaxed);
    }

    pub fn set_database(&self, connected: bool) {
        self.database.store(connected, Ordering::Relaxed);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
            && self.database.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }
}
