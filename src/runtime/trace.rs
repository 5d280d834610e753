//! A readable, deterministic trace of a run: one line per delivery,
//! `Emitter -> Subscriber: EVENT {key fields}`, plus lines the driver adds
//! (client requests, clock jumps, faults). The trace's hash is what the
//! simulator's determinism check compares.

use std::sync::Mutex;

use super::observer::{Disposition, Observer, RuntimeEvent};

/// Collects trace lines; an [`Observer`].
#[derive(Debug, Default)]
pub struct TraceRecorder {
    lines: Mutex<Vec<String>>,
}

impl TraceRecorder {
    pub fn push(&self, line: impl Into<String>) {
        self.lines.lock().expect("trace mutex").push(line.into());
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("trace mutex").clone()
    }

    pub fn len(&self) -> usize {
        self.lines.lock().expect("trace mutex").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// FNV-1a over the lines: stable across processes and builds.
    pub fn hash(&self) -> u64 {
        trace_hash(&self.lines())
    }
}

/// FNV-1a over `lines`, each terminated by a newline.
pub fn trace_hash(lines: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in lines {
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The trace line of one handled delivery.
pub fn delivery_line(event: &RuntimeEvent<'_>) -> Option<String> {
    let RuntimeEvent::Handled {
        service,
        event,
        disposition,
        ..
    } = event
    else {
        return None;
    };
    let suffix = match disposition {
        Disposition::Applied { .. } => String::new(),
        Disposition::Duplicate => " [duplicate]".to_string(),
        Disposition::Ignored => " [no-op]".to_string(),
        Disposition::Retry { reason } => format!(" [retry: {reason}]"),
        Disposition::DeadLettered { reason } => format!(" [dead-letter: {reason}]"),
    };
    Some(match event {
        Some(e) => format!("{} -> {service}: {}{suffix}", e.emitter(), e.summary()),
        None => format!("? -> {service}: <undecodable>{suffix}"),
    })
}

impl Observer for TraceRecorder {
    fn observe(&self, event: RuntimeEvent<'_>) {
        if let Some(line) = delivery_line(&event) {
            self.push(line);
        }
    }
}
