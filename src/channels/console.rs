//! The console channel: one line per event on standard output (what `linkwatch demo` shows).

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::SendError;
use crate::message::Message;

/// Where console lines go: standard output, or a buffer that tests read.
#[derive(Debug, Clone, Default)]
pub enum ConsoleSink {
    #[default]
    Stdout,
    Memory(Arc<Mutex<Vec<String>>>),
}

#[derive(Debug)]
pub struct Console {
    sink: ConsoleSink,
}

impl Console {
    pub fn new(sink: ConsoleSink) -> Self {
        Console { sink }
    }

    pub fn send(&self, messages: &[Message]) -> Result<(), SendError> {
        let lines = messages.iter().map(line);
        match &self.sink {
            ConsoleSink::Stdout => {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    writeln!(out, "{l}").map_err(|e| SendError::Transient {
                        error: format!("cannot write to standard output: {e}"),
                        retry_after: None,
                        rate_limited: false,
                    })?;
                }
                out.flush().ok();
            }
            // The buffer only exists in tests; a poisoned one means the test broke it on purpose
            // (to make this worker panic and watch it recover), so panicking is the point.
            ConsoleSink::Memory(buf) => buf.lock().expect("the test console buffer is poisoned").extend(lines),
        }
        Ok(())
    }
}

fn line(m: &Message) -> String {
    if let Some(report) = crate::report::Report::of(m) {
        return report.text().trim_end().to_owned();
    }
    let at = m.at.get(..19).unwrap_or(&m.at);
    format!("{at}Z  {:<15} {}", m.kind, m.title)
}
