//! The gateway's fan-out index: for every user with a session in this process, the servers
//! they belong to and the channel they are in, so that a post or a channel message finds its
//! audience here in memory, without reading the store per event.
//!
//! A post to a server of 100,000 subscribers costs one event on the command path; each
//! gateway process then pushes it to the subscribers it holds sessions for, found in this
//! index (cost: the local audience, not the server's size).
//!
//! The index is kept from the log itself: `ServerCreated`, `ServerSubscribed`,
//! `ServerUnsubscribed`, `ChannelJoined`, `ChannelLeft` and `ChannelDeleted` update it as the
//! gateway reads them. A user's entry is loaded from the read models when their first session
//! subscribes: the gateway's reader does it between two batches, once the read models hold
//! everything the gateway has read, so the entry is at least as new as the gateway's position
//! and the events it reads afterwards bring it forward (applying one it already reflects
//! changes nothing). Until then events of that user leave the index alone: the load covers
//! them. The entry goes with the user's last session.

use std::collections::{HashMap, HashSet};

use missive_events::Event;
use uuid::Uuid;

/// One local user's memberships.
#[derive(Debug, Default)]
struct Entry {
    servers: HashSet<Uuid>,
    channel: Option<Uuid>,
}

/// Servers and channels of the users with a session here.
#[derive(Debug, Default)]
pub(crate) struct FanoutIndex {
    users: HashMap<Uuid, Entry>,
    /// Server → its local members.
    servers: HashMap<Uuid, HashSet<Uuid>>,
    /// Channel → its local members.
    channels: HashMap<Uuid, HashSet<Uuid>>,
    /// Users whose entry waits to be loaded.
    to_load: HashSet<Uuid>,
}

impl FanoutIndex {
    /// A session of the user subscribed: their entry is to be loaded unless it is. Whether
    /// it is loaded already.
    pub(crate) fn want(&mut self, user: Uuid) -> bool {
        if self.users.contains_key(&user) {
            return true;
        }
        self.to_load.insert(user);
        false
    }

    /// The user's last session went: forget them.
    pub(crate) fn forget(&mut self, user: Uuid) {
        self.to_load.remove(&user);
        if let Some(entry) = self.users.remove(&user) {
            for server in entry.servers {
                remove_member(&mut self.servers, server, user);
            }
            if let Some(channel) = entry.channel {
                remove_member(&mut self.channels, channel, user);
            }
        }
    }

    /// The users whose entries are to be loaded now.
    pub(crate) fn take_loads(&mut self) -> Vec<Uuid> {
        self.to_load.drain().collect()
    }

    /// Loads are retried later (the read models were behind).
    pub(crate) fn retry(&mut self, users: impl IntoIterator<Item = Uuid>) {
        self.to_load.extend(users);
    }

    /// A user's entry as the read models showed it. The caller checks the user still has a
    /// session here.
    pub(crate) fn loaded(&mut self, user: Uuid, servers: Vec<Uuid>, channel: Option<Uuid>) {
        self.forget(user);
        for &server in &servers {
            self.servers.entry(server).or_default().insert(user);
        }
        if let Some(channel) = channel {
            self.channels.entry(channel).or_default().insert(user);
        }
        self.users.insert(
            user,
            Entry {
                servers: servers.into_iter().collect(),
                channel,
            },
        );
    }

    /// Brings the index forward by one event.
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::ServerCreated {
                server_id,
                owner_id: user_id,
                ..
            }
            | Event::ServerSubscribed { server_id, user_id } => {
                if let Some(entry) = self.users.get_mut(user_id) {
                    entry.servers.insert(*server_id);
                    self.servers.entry(*server_id).or_default().insert(*user_id);
                }
            }
            Event::ServerUnsubscribed { server_id, user_id } => {
                if let Some(entry) = self.users.get_mut(user_id) {
                    entry.servers.remove(server_id);
                    remove_member(&mut self.servers, *server_id, *user_id);
                }
            }
            Event::ChannelJoined {
                user_id,
                channel_id,
                ..
            } => {
                if let Some(entry) = self.users.get_mut(user_id) {
                    if let Some(previous) = entry.channel.replace(*channel_id) {
                        remove_member(&mut self.channels, previous, *user_id);
                    }
                    self.channels
                        .entry(*channel_id)
                        .or_default()
                        .insert(*user_id);
                }
            }
            Event::ChannelLeft {
                user_id,
                channel_id,
                ..
            } => {
                if let Some(entry) = self.users.get_mut(user_id)
                    && entry.channel == Some(*channel_id)
                {
                    entry.channel = None;
                    remove_member(&mut self.channels, *channel_id, *user_id);
                }
            }
            Event::ChannelDeleted { channel_id, .. } => {
                for user in self.channels.remove(channel_id).unwrap_or_default() {
                    if let Some(entry) = self.users.get_mut(&user) {
                        entry.channel = None;
                    }
                }
            }
            _ => {}
        }
    }

    /// The local members of a server.
    pub(crate) fn server_audience(&self, server: Uuid) -> Vec<Uuid> {
        self.servers
            .get(&server)
            .map(|users| users.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The local users in a channel.
    pub(crate) fn channel_audience(&self, channel: Uuid) -> Vec<Uuid> {
        self.channels
            .get(&channel)
            .map(|users| users.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn remove_member(index: &mut HashMap<Uuid, HashSet<Uuid>>, key: Uuid, user: Uuid) {
    if let Some(users) = index.get_mut(&key) {
        users.remove(&user);
        if users.is_empty() {
            index.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn events_of_loaded_users_move_the_index_and_others_are_left_to_the_load() {
        let (alice, bob, s1, s2, c1, c2) = (id(1), id(2), id(10), id(11), id(20), id(21));
        let mut index = FanoutIndex::default();
        index.want(alice);
        index.want(bob);
        assert_eq!(index.take_loads().len(), 2);
        index.loaded(alice, vec![s1], Some(c1));
        // Bob's load is still out: his events are covered by it.
        index.apply(&Event::ServerSubscribed {
            server_id: s1,
            user_id: bob,
        });
        assert_eq!(index.server_audience(s1), vec![alice]);
        assert_eq!(index.channel_audience(c1), vec![alice]);

        index.apply(&Event::ServerSubscribed {
            server_id: s2,
            user_id: alice,
        });
        index.apply(&Event::ChannelJoined {
            user_id: alice,
            server_id: s2,
            channel_id: c2,
        });
        assert_eq!(index.server_audience(s2), vec![alice]);
        assert!(
            index.channel_audience(c1).is_empty(),
            "one channel at a time"
        );
        assert_eq!(index.channel_audience(c2), vec![alice]);
        // Leaving another channel than hers changes nothing; deleting hers takes her out.
        index.apply(&Event::ChannelLeft {
            user_id: alice,
            server_id: s1,
            channel_id: c1,
            reason: missive_events::ChannelLeaveReason::Left,
        });
        assert_eq!(index.channel_audience(c2), vec![alice]);
        index.apply(&Event::ChannelDeleted {
            channel_id: c2,
            server_id: s2,
            deleted_by: bob,
        });
        assert!(index.channel_audience(c2).is_empty());
        index.apply(&Event::ChannelJoined {
            user_id: alice,
            server_id: s1,
            channel_id: c1,
        });
        assert_eq!(index.channel_audience(c1), vec![alice]);

        index.apply(&Event::ServerUnsubscribed {
            server_id: s1,
            user_id: alice,
        });
        assert!(index.server_audience(s1).is_empty());
        index.forget(alice);
        assert!(index.server_audience(s2).is_empty());
        assert!(index.channel_audience(c1).is_empty());
        assert!(index.users.is_empty() && index.servers.is_empty() && index.channels.is_empty());
    }

    #[test]
    fn a_user_gone_before_the_load_is_not_loaded_again() {
        let mut index = FanoutIndex::default();
        index.want(id(1));
        index.forget(id(1));
        assert!(index.take_loads().is_empty());
        index.want(id(2));
        let taken = index.take_loads();
        index.retry(taken);
        assert_eq!(index.take_loads(), vec![id(2)]);
    }
}
