//! Counts tracing events by their `event` field, for tests of what gets logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tracing::field::{Field, Visit};
use tracing_subscriber::{layer::Context, prelude::*, Layer};

#[derive(Clone, Default)]
pub struct EventCounter(Arc<Mutex<HashMap<String, usize>>>);

struct Name(Option<String>);

impl Visit for Name {
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "event" {
            self.0 = Some(v.to_owned());
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "event" {
            self.0 = Some(format!("{v:?}").trim_matches('"').to_owned());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for EventCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut name = Name(None);
        event.record(&mut name);
        if let Some(n) = name.0 {
            *self.0.lock().unwrap().entry(n).or_default() += 1;
        }
    }
}

impl EventCounter {
    /// Install as this thread's subscriber until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    pub fn count(&self, event: &str) -> usize {
        self.0.lock().unwrap().get(event).copied().unwrap_or(0)
    }
}
