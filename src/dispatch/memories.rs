//! What the channels remember beyond the database, kept across reloads, and which channels are
//! configured now.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::step::Memory;
use crate::channels::email;
use crate::metrics::{Blocked, Metrics, Refused};

/// What each channel remembers beyond the database, by channel name. It outlives a dispatcher:
/// [`Dispatcher::with_memories`](super::Dispatcher::with_memories) takes over the previous one's, so that a reload forgets no
/// outcome waiting to be written, no retry time, and no mail recipient's progress. A channel
/// removed by a reload keeps its memory, for when a channel of that name returns (its pending
/// rows wait for it).
///
/// It also knows which channels the latest dispatcher has, so that whether a channel is blocked
/// is said only of those: a worker of the previous config, still running during a reload (or
/// finishing a send after it), does not put a removed channel back on the blocked list.
#[derive(Debug, Clone, Default)]
pub struct Memories(Arc<std::sync::Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    kept: HashMap<String, Kept>,
    /// The channels of the latest dispatcher built on these memories.
    configured: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Kept {
    pub(super) memory: Arc<Mutex<Memory>>,
    pub(super) recipients: email::Progress,
}

impl Memories {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn of(&self, channel: &str) -> Kept {
        self.lock().kept.entry(channel.to_owned()).or_default().clone()
    }

    pub(super) fn all(&self) -> Vec<(String, Arc<Mutex<Memory>>)> {
        let all = self.lock();
        all.kept
            .iter()
            .map(|(name, k)| (name.clone(), k.memory.clone()))
            .collect()
    }

    /// From now on, only `channels` are configured: the others are no longer blocked.
    pub(super) fn configure(&self, channels: HashSet<String>, metrics: &Metrics) {
        let mut all = self.lock();
        metrics.retain_blocked(|name| channels.contains(name));
        all.configured = channels;
    }

    /// Says whether `channel` is blocked, unless it is no longer configured (then it is not).
    /// Under the same lock as [`configure`](Self::configure), so that the two cannot cross.
    pub(super) fn publish_blocked(&self, channel: &str, blocked: Option<Blocked>, metrics: &Metrics) {
        let all = self.lock();
        let blocked = blocked.filter(|_| all.configured.contains(channel));
        metrics.set_blocked(channel, blocked);
    }

    /// Says whether `channel`'s latest delivery was refused for good, on the same terms as
    /// [`publish_blocked`](Self::publish_blocked).
    pub(super) fn publish_refused(&self, channel: &str, refused: Option<Refused>, metrics: &Metrics) {
        let all = self.lock();
        let refused = refused.filter(|_| all.configured.contains(channel));
        metrics.set_refused(channel, refused);
    }

    /// For how many events `channel` keeps which mail recipient has them.
    pub(super) fn mail_progress(&self, channel: &str) -> usize {
        self.lock().kept.get(channel).map_or(0, |k| k.recipients.len())
    }
}
