//! The only code that sends notifications. Each channel takes a batch of messages and says
//! whether they arrived, or how the failure should be treated (retry or give up).

pub mod console;

use std::time::Duration;

use crate::config;
use crate::message::Message;

pub use console::ConsoleSink;

/// Why a send failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Timeouts, connection errors, 5xx, 429, SMTP 4xx: try again later, not before `retry_after`.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused for good (a removed webhook, a bad address): stop now.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient { error, .. } => write!(f, "{error} (will retry)"),
            SendError::Permanent(e) => write!(f, "{e} (permanent)"),
        }
    }
}

#[derive(Debug)]
pub enum Channel {
    Console(console::Console),
}

impl Channel {
    pub fn from_config(c: &config::Channel, console: &ConsoleSink) -> Channel {
        match c.kind {
            config::ChannelKind::Console => {
                Channel::Console(console::Console::new(console.clone()))
            }
        }
    }

    /// Sends `messages` (one, or several due at once) as one delivery.
    pub async fn send(&self, messages: &[Message]) -> Result<(), SendError> {
        match self {
            Channel::Console(c) => c.send(messages),
        }
    }

    /// How many due deliveries one send may carry.
    pub fn max_batch(&self) -> i64 {
        match self {
            Channel::Console(_) => 100,
        }
    }
}
