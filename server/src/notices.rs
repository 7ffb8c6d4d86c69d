//! Server-initiated messages to client instances (SPEC §3): the engine's queue notices
//! (R17) go to the live connection of the client instance that queued the checkout.
//!
//! A connection registers its client instance once signed in and is removed when it ends;
//! a newer connection of the same instance takes the place of an older one. A notice for an
//! instance with no connection is dropped: the client learns the outcome when it
//! reconnects and sends its `CheckoutWait` again (the lease granted meanwhile, or its place).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tally_protocol::{ClientId, ServerMessage};
use tokio::sync::mpsc;

/// The live connection of each client instance, by the session's client id.
#[derive(Debug, Default)]
pub struct Notices {
    /// The connection registered last for each instance: its number and its sender.
    live: Mutex<HashMap<ClientId, (u64, mpsc::UnboundedSender<Notice>)>>,
    /// Numbers connections, so that one ending never removes a newer one's place.
    next: AtomicU64,
}

/// A message on its way to a connection, boxed: a channel allocates room for 32 of what it
/// carries when it is made, and every connection holds one, while notices are rare.
pub type Notice = Box<ServerMessage>;

/// A connection's place in [`Notices`]: its messages arrive on `messages`, and dropping it
/// gives the place up (unless a newer connection of the instance took it).
pub struct Registration {
    notices: Arc<Notices>,
    client: ClientId,
    number: u64,
    pub messages: mpsc::UnboundedReceiver<Notice>,
}

impl Notices {
    /// Makes the calling connection the one `client`'s notices go to.
    pub fn register(self: &Arc<Self>, client: ClientId) -> Registration {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, messages) = mpsc::unbounded_channel();
        self.live
            .lock()
            .expect("notices lock")
            .insert(client, (number, sender));
        Registration {
            notices: self.clone(),
            client,
            number,
            messages,
        }
    }

    /// Sends `message` to `client`'s connection; dropped when it has none. Notices are few
    /// per instance (one per waiting checkout, and an instance may have at most
    /// `core::MAX_WAITS_PER_CLIENT` waiting), so the channel needs no bound.
    pub fn send(&self, client: ClientId, message: ServerMessage) {
        let live = self.live.lock().expect("notices lock");
        if let Some((_, sender)) = live.get(&client) {
            let _ = sender.send(Box::new(message));
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.notices.live.lock().expect("notices lock");
        if live
            .get(&self.client)
            .is_some_and(|(n, _)| *n == self.number)
        {
            live.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_goes_to_the_newest_connection_and_an_older_one_ending_keeps_it() {
        let notices = Arc::new(Notices::default());
        let client = ClientId([1; 16]);
        let mut old = notices.register(client);
        let mut new = notices.register(client);
        drop(std::mem::replace(
            &mut old.messages,
            mpsc::unbounded_channel().1,
        ));
        drop(old);
        notices.send(
            client,
            ServerMessage::Error(tally_protocol::ErrorBody::invalid("x")),
        );
        assert!(new.messages.try_recv().is_ok());
        drop(new);
        // No connection: dropped, nothing kept.
        notices.send(
            client,
            ServerMessage::Error(tally_protocol::ErrorBody::invalid("y")),
        );
        assert!(notices.live.lock().unwrap().is_empty());
    }
}
