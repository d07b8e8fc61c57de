//! Servers (communities): the commands and queries of issue 6.
//!
//! Locks, so that each decision sees the commands it depends on (the lock is held until the
//! events are projected):
//! - `server-name:<key>`: creating a server (names are unique, ignoring case).
//! - `server:<id>`: everything that reads or changes a server's members, invitations or
//!   channels.
//! - `user:<id>` together with the server's: subscribing, unsubscribing, answering an
//!   invitation, joining and leaving channels (a user's channel is one across all servers, and
//!   unsubscribing takes them out of the server's channel). Taken with
//!   [`KeyedLocks::lock_many`](crate::locks::KeyedLocks::lock_many), never one inside the other.
//!
//! Posts and channel messages take no lock: they depend only on who owns the server and who
//! is in the channel, and they are the hot paths.
//!
//! A private server does not exist for an outsider without an invitation (404, never 403),
//! so its id cannot be probed.

use chrono::{DateTime, Utc};
use missive_domain::DomainError;
use missive_domain::communities::{
    self as rules, ChannelRef, ChannelSend, CreateChannel, InvitationView, Invite, Join,
    Membership, Publish, ServerView,
};
use missive_events::{InvitationOutcome, Visibility};
use missive_log::Position;
use missive_store::{
    Channel, ChannelMessage, ChannelSummary, HistoryQuery, Invitation, InvitationState, Page, Post,
    Server, ServerRole, ServerSearch, UserServer, server_name_key,
};
use uuid::Uuid;

use crate::{Actor, Result, SendReceipt, Service};

/// The answer to creating a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedServer {
    pub server: Server,
    pub position: Position,
}

/// The answer to an invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    /// The new invitation, or the one already pending for the invitee.
    pub invitation_id: Uuid,
    /// `None` when one was pending already (nothing was appended).
    pub position: Option<Position>,
}

/// The answer to publishing a post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub post_id: Uuid,
    pub published_at: DateTime<Utc>,
    pub position: Position,
}

/// The answer to creating a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedChannel {
    pub channel: Channel,
    pub position: Position,
}

fn view(server: &Server) -> ServerView {
    ServerView {
        server_id: server.server_id,
        owner_id: server.owner_id,
        visibility: server.visibility,
    }
}

fn channel_ref(channel: &Channel) -> ChannelRef {
    ChannelRef {
        server_id: channel.server_id,
        channel_id: channel.channel_id,
    }
}

fn server_key(server: Uuid) -> String {
    format!("server:{server}")
}

fn user_key(user: Uuid) -> String {
    format!("user:{user}")
}

impl Service {
    /// What `user` is to `server`: owner, subscriber, or an outsider with or without a
    /// pending invitation.
    async fn membership_of(&self, server: Uuid, user: Uuid) -> Result<Membership> {
        Ok(match self.store.membership(server, user).await? {
            Some(ServerRole::Owner) => Membership::Owner,
            Some(ServerRole::Subscriber) => Membership::Subscriber,
            None => Membership::Outsider {
                invitation: self
                    .store
                    .pending_invitation(server, user)
                    .await?
                    .map(|i| i.invitation_id),
            },
        })
    }

    /// The server and the actor's membership of it; a server the actor may not know of is
    /// not found.
    async fn reachable_server(&self, actor: Actor, id: Uuid) -> Result<(Server, Membership)> {
        let server = self.store.server(id).await?;
        let membership = match &server {
            Some(_) => self.membership_of(id, actor.user_id).await?,
            None => Membership::Outsider { invitation: None },
        };
        rules::reachable(server.as_ref().map(view), membership)?;
        match server {
            Some(server) => Ok((server, membership)),
            None => Err(DomainError::ServerNotFound.into()),
        }
    }

    /// The channel the user is in, as decisions need it.
    async fn current_ref(&self, user: Uuid) -> Result<Option<ChannelRef>> {
        Ok(self
            .store
            .current_channel(user)
            .await?
            .as_ref()
            .map(channel_ref))
    }

    // ----- servers -----

    /// Creates a server owned by the actor.
    pub async fn create_server(
        &self,
        actor: Actor,
        name: &str,
        tags: &[String],
        visibility: Visibility,
    ) -> Result<CreatedServer> {
        let name = rules::validate_server_name(name)?;
        let tags = rules::normalize_tags(tags)?;
        let _guard = self
            .locks
            .lock(&format!("server-name:{}", server_name_key(&name)))
            .await;
        self.catch_up().await?;
        self.require_registered(actor).await?;
        let taken = self.store.server_by_name(&name).await?.is_some();
        let server_id = Uuid::now_v7();
        let events =
            rules::decide_create_server(server_id, actor.user_id, &name, &tags, visibility, taken)?;
        let (now, position) = self.append_now(actor, events).await?;
        if !self.wait_for(position, self.config.projection_wait).await {
            tracing::warn!(%position, "server created but not projected in time");
        }
        Ok(CreatedServer {
            server: Server {
                server_id,
                owner_id: actor.user_id,
                name,
                tags,
                visibility,
                created_at: now,
            },
            position,
        })
    }

    /// Refuses a command from a token whose user does not exist on this server.
    async fn require_registered(&self, actor: Actor) -> Result<()> {
        if self.store.user(actor.user_id).await?.is_none() {
            return Err(DomainError::Forbidden(
                "your account does not exist on this server; register first",
            )
            .into());
        }
        Ok(())
    }

    /// A server the actor may know of.
    pub async fn server(&self, actor: Actor, id: Uuid) -> Result<Server> {
        Ok(self.reachable_server(actor, id).await?.0)
    }

    /// Public servers by name (prefix for one or two characters, substring for more) and tags.
    pub async fn search_servers(
        &self,
        name: Option<&str>,
        tags: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Server>> {
        let tags = rules::normalize_tags(tags)?;
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        if let Some(n) = name
            && n.chars().count() > 64
        {
            return Err(DomainError::Invalid {
                field: "name",
                rule: "a name query is at most 64 characters".into(),
            }
            .into());
        }
        if name.is_none() && tags.is_empty() {
            return Err(DomainError::Invalid {
                field: "name",
                rule: "give a name to search for, tags, or both".into(),
            }
            .into());
        }
        let search = ServerSearch {
            name: name.map(server_name_key),
            tags,
        };
        Ok(self.store.search_servers(&search, after, limit).await?)
    }

    /// The servers a user owns or is subscribed to: only the user themselves may list them.
    pub async fn user_servers(
        &self,
        actor: Actor,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<UserServer>> {
        if user != actor.user_id {
            return Err(
                DomainError::Forbidden("only the user themselves may list their servers").into(),
            );
        }
        Ok(self.store.user_servers(user, after, limit).await?)
    }

    /// Subscribes the actor (accepting a pending invitation if there is one).
    pub async fn subscribe(&self, actor: Actor, server_id: Uuid) -> Result<Option<Position>> {
        let (s, u) = (server_key(server_id), user_key(actor.user_id));
        let _guards = self.locks.lock_many(&[&s, &u]).await;
        self.catch_up().await?;
        self.require_registered(actor).await?;
        let server = self.store.server(server_id).await?;
        let membership = self.membership_of(server_id, actor.user_id).await?;
        let events = rules::decide_subscribe(server.as_ref().map(view), actor.user_id, membership)?;
        self.append_and_project(actor, events).await
    }

    /// Unsubscribes the actor, who leaves the server's channel if they are in one.
    pub async fn unsubscribe(&self, actor: Actor, server_id: Uuid) -> Result<Option<Position>> {
        let (s, u) = (server_key(server_id), user_key(actor.user_id));
        let _guards = self.locks.lock_many(&[&s, &u]).await;
        self.catch_up().await?;
        let server = self.store.server(server_id).await?;
        let membership = self.membership_of(server_id, actor.user_id).await?;
        let current = self.current_ref(actor.user_id).await?;
        let events = rules::decide_unsubscribe(
            server.as_ref().map(view),
            actor.user_id,
            membership,
            current,
        )?;
        self.append_and_project(actor, events).await
    }

    // ----- invitations -----

    /// Invites a user; with a notification for the push service.
    pub async fn invite(&self, actor: Actor, server_id: Uuid, invitee: Uuid) -> Result<Invited> {
        let _guard = self.locks.lock(&server_key(server_id)).await;
        self.catch_up().await?;
        self.check_actor(actor.user_id)?;
        self.check_reachable(invitee)?;
        let server = self.store.server(server_id).await?;
        let actor_membership = self.membership_of(server_id, actor.user_id).await?;
        let invitee_membership = if self.store.user(invitee).await?.is_some() {
            Some(self.membership_of(server_id, invitee).await?)
        } else {
            None
        };
        let invitation_id = Uuid::now_v7();
        let events = rules::decide_invite(Invite {
            server: server.as_ref().map(view),
            actor: actor.user_id,
            actor_membership,
            invitee,
            invitee_membership,
            invitation_id,
        })?;
        if events.is_empty() {
            let pending = match invitee_membership {
                Some(Membership::Outsider {
                    invitation: Some(id),
                }) => id,
                _ => invitation_id,
            };
            return Ok(Invited {
                invitation_id: pending,
                position: None,
            });
        }
        let position = self.append_and_project(actor, events).await?;
        Ok(Invited {
            invitation_id,
            position,
        })
    }

    /// The invitations waiting for the actor's answer, newest first.
    pub async fn pending_invitations(
        &self,
        actor: Actor,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Invitation>> {
        Ok(self
            .store
            .pending_invitations(actor.user_id, after, limit)
            .await?)
    }

    /// An invitation sent to the actor (any state); not found for anyone else.
    pub async fn invitation(&self, actor: Actor, invitation_id: Uuid) -> Result<Invitation> {
        self.store
            .invitation(invitation_id)
            .await?
            .filter(|i| i.invitee_id == actor.user_id)
            .ok_or_else(|| DomainError::InvitationNotFound(invitation_id).into())
    }

    /// Accepts (subscribing) or declines an invitation sent to the actor.
    pub async fn answer_invitation(
        &self,
        actor: Actor,
        invitation_id: Uuid,
        accept: bool,
    ) -> Result<Option<Position>> {
        // The server is only known once the invitation is read: read it, lock, read again.
        // The invitee may act on a push that came straight from the log: catch up first.
        self.catch_up().await?;
        let Some(found) = self.store.invitation(invitation_id).await? else {
            return Err(DomainError::InvitationNotFound(invitation_id).into());
        };
        let (s, u) = (server_key(found.server_id), user_key(actor.user_id));
        let _guards = self.locks.lock_many(&[&s, &u]).await;
        self.catch_up().await?;
        let invitation = self
            .store
            .invitation(invitation_id)
            .await?
            .map(|i| InvitationView {
                invitation_id: i.invitation_id,
                server_id: i.server_id,
                invitee_id: i.invitee_id,
                answer: match i.state {
                    InvitationState::Pending => None,
                    InvitationState::Accepted => Some(InvitationOutcome::Accepted),
                    InvitationState::Declined => Some(InvitationOutcome::Declined),
                },
            });
        let membership = self.membership_of(found.server_id, actor.user_id).await?;
        let events = rules::decide_answer_invitation(
            invitation,
            invitation_id,
            actor.user_id,
            membership,
            accept,
        )?;
        self.append_and_project(actor, events).await
    }

    // ----- posts -----

    /// Publishes a post on a server the actor owns.
    pub async fn publish_post(
        &self,
        actor: Actor,
        server_id: Uuid,
        content: &str,
        tags: &[String],
    ) -> Result<Published> {
        self.await_startup().await?;
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        let post_id = Uuid::now_v7();
        let events = rules::decide_publish_post(Publish {
            server: Some(view(&server)),
            actor: actor.user_id,
            membership,
            post_id,
            content,
            tags,
            max_chars: self.config.max_text_chars,
        })?;
        let (now, position) = self.append_now(actor, events).await?;
        Ok(Published {
            post_id,
            published_at: now,
            position,
        })
    }

    /// A server's posts, newest first: anyone for a public server, members for a private one
    /// (an invited user is refused, an outsider does not find the server).
    pub async fn posts(
        &self,
        actor: Actor,
        server_id: Uuid,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Post>> {
        self.readable_server(actor, server_id).await?;
        Ok(self.store.posts(server_id, before, limit).await?)
    }

    // ----- channels -----

    /// Creates a channel on a server the actor owns.
    pub async fn create_channel(
        &self,
        actor: Actor,
        server_id: Uuid,
        name: &str,
    ) -> Result<CreatedChannel> {
        let _guard = self.locks.lock(&server_key(server_id)).await;
        self.catch_up().await?;
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        let channels = self.store.channels(server_id, actor.user_id).await?;
        let names: Vec<&str> = channels.iter().map(|c| c.channel.name.as_str()).collect();
        let channel_id = Uuid::now_v7();
        let events = rules::decide_create_channel(CreateChannel {
            server: Some(view(&server)),
            actor: actor.user_id,
            membership,
            channel_id,
            name,
            existing: &names,
        })?;
        let (now, position) = self.append_now(actor, events).await?;
        if !self.wait_for(position, self.config.projection_wait).await {
            tracing::warn!(%position, "channel created but not projected in time");
        }
        Ok(CreatedChannel {
            channel: Channel {
                channel_id,
                server_id,
                name: name.to_owned(),
                created_by: actor.user_id,
                created_at: now,
            },
            position,
        })
    }

    /// Deletes a channel of a server the actor owns; its members are in no channel after.
    pub async fn delete_channel(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
    ) -> Result<Option<Position>> {
        let _guard = self.locks.lock(&server_key(server_id)).await;
        self.catch_up().await?;
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        let channel = self.store.channel(channel_id).await?;
        let events = rules::decide_delete_channel(
            Some(view(&server)),
            actor.user_id,
            membership,
            channel_id,
            channel.as_ref().map(channel_ref),
        )?;
        self.append_and_project(actor, events).await
    }

    /// A server's channels with the actor's unread counts: for those who may read the
    /// server's content (anyone for a public server, members for a private one).
    pub async fn channels(&self, actor: Actor, server_id: Uuid) -> Result<Vec<ChannelSummary>> {
        self.readable_server(actor, server_id).await?;
        Ok(self.store.channels(server_id, actor.user_id).await?)
    }

    /// The server, if the actor may read its content: anyone for a public server, members for
    /// a private one (an invited user is refused, an outsider does not find it).
    async fn readable_server(&self, actor: Actor, server_id: Uuid) -> Result<Server> {
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        if !rules::may_read_posts(view(&server), membership) {
            return Err(DomainError::Forbidden(
                "this server is private: accept your invitation to see its content",
            )
            .into());
        }
        Ok(server)
    }

    /// The channel the actor is in, if any.
    pub async fn my_channel(&self, actor: Actor) -> Result<Option<Channel>> {
        Ok(self.store.current_channel(actor.user_id).await?)
    }

    /// Joins a channel (leaving the one the actor was in). A join while the actor's read
    /// marker in the channel is still at its start (a first join) starts with nothing unread:
    /// the marker is put at the channel's latest message. (A user who never read a channel
    /// they left has it marked read when they join again.)
    pub async fn join_channel(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
    ) -> Result<Option<Position>> {
        let (s, u) = (server_key(server_id), user_key(actor.user_id));
        let _guards = self.locks.lock_many(&[&s, &u]).await;
        self.catch_up().await?;
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        let target = self.store.channel(channel_id).await?;
        let current = self.current_ref(actor.user_id).await?;
        let never_read = self
            .store
            .channels(server_id, actor.user_id)
            .await?
            .into_iter()
            .find(|c| c.channel.channel_id == channel_id)
            .is_some_and(|c| c.last_seq > 0 && c.unread_count == c.last_seq);
        let mark_read_up_to = if never_read {
            self.store
                .latest_channel_message(channel_id)
                .await?
                .map(|m| m.message_id)
        } else {
            None
        };
        let events = rules::decide_join_channel(Join {
            server: Some(view(&server)),
            channel_id,
            target: target.as_ref().map(channel_ref),
            actor: actor.user_id,
            membership,
            current,
            mark_read_up_to,
        })?;
        self.append_and_project(actor, events).await
    }

    /// Leaves a channel; leaving one the actor is not in changes nothing.
    pub async fn leave_channel(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
    ) -> Result<Option<Position>> {
        let (s, u) = (server_key(server_id), user_key(actor.user_id));
        let _guards = self.locks.lock_many(&[&s, &u]).await;
        self.catch_up().await?;
        self.reachable_server(actor, server_id).await?;
        let target = self.store.channel(channel_id).await?;
        let current = self.current_ref(actor.user_id).await?;
        let events = rules::decide_leave_channel(
            server_id,
            channel_id,
            target.as_ref().map(channel_ref),
            actor.user_id,
            current,
        )?;
        self.append_and_project(actor, events).await
    }

    /// The users in a channel: for those who may read the server's content.
    pub async fn channel_members(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Uuid>> {
        self.readable_server(actor, server_id).await?;
        self.channel_of(actor, server_id, channel_id).await?;
        Ok(self.store.channel_members(channel_id, after, limit).await?)
    }

    /// The channel a request names, if it is one of the server's and the actor may see it.
    async fn channel_of(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
    ) -> Result<(Server, Membership, Channel)> {
        let (server, membership) = self.reachable_server(actor, server_id).await?;
        let channel = self
            .store
            .channel(channel_id)
            .await?
            .filter(|c| c.server_id == server_id)
            .ok_or(DomainError::ChannelNotFound(channel_id))?;
        Ok((server, membership, channel))
    }

    /// Refuses anyone who is not in the channel now (and subscribed to its server).
    async fn require_in_channel(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
    ) -> Result<()> {
        let (_, membership, channel) = self.channel_of(actor, server_id, channel_id).await?;
        let current = self.current_ref(actor.user_id).await?;
        if current != Some(channel_ref(&channel)) || !membership.is_member() {
            return Err(DomainError::Forbidden(
                "join the channel to read it: only its members may",
            )
            .into());
        }
        Ok(())
    }

    /// Sends a message to a channel the actor is in. With a `client_msg_id`, a retry returns
    /// the original message. The receipt's `conversation_id` is the channel.
    pub async fn send_channel_message(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<SendReceipt> {
        let Some(cmid) = client_msg_id else {
            return self
                .send_channel_new(actor, server_id, channel_id, text, None)
                .await;
        };
        missive_domain::messages::validate_client_msg_id(cmid)?;
        missive_domain::messages::validate_text(text, self.config.max_text_chars)?;
        let receipt = self
            .send_once(
                // Direct and channel messages have separate idempotency keys.
                (actor.user_id, format!("channel:{cmid}")),
                || async {
                    let earlier = self
                        .store
                        .channel_message_by_client_id(actor.user_id, cmid)
                        .await?;
                    Ok(earlier.map(|m| receipt_of(&m, true)))
                },
                || self.send_channel_new(actor, server_id, channel_id, text, Some(cmid)),
            )
            .await?;
        if receipt.conversation_id != channel_id {
            return Err(DomainError::Conflict(format!(
                "client_msg_id {cmid:?} was used for a message to another channel; use a new key for a new message"
            ))
            .into());
        }
        Ok(receipt)
    }

    async fn send_channel_new(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<SendReceipt> {
        missive_domain::messages::validate_text(text, self.config.max_text_chars)?;
        self.await_startup().await?;
        let (_, membership) = self.reachable_server(actor, server_id).await?;
        let target = self.store.channel(channel_id).await?;
        let current = self.current_ref(actor.user_id).await?;
        let message_id = Uuid::now_v7();
        let events = rules::decide_send_channel_message(ChannelSend {
            server_id,
            channel_id,
            target: target.as_ref().map(channel_ref),
            actor: actor.user_id,
            membership,
            current,
            message_id,
            text,
            client_msg_id,
            max_chars: self.config.max_text_chars,
        })?;
        let (now, position) = self.append_now(actor, events).await?;
        Ok(SendReceipt {
            message_id,
            conversation_id: channel_id,
            sent_at: now,
            position,
            duplicate: false,
        })
    }

    /// A page of a channel's messages: for the users in it.
    pub async fn channel_history(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
        query: HistoryQuery,
    ) -> Result<Page<ChannelMessage>> {
        self.require_in_channel(actor, server_id, channel_id)
            .await?;
        Ok(self
            .store
            .channel_history(actor.user_id, channel_id, query)
            .await?)
    }

    /// Moves the actor's read marker in a channel they are in up to `up_to`.
    pub async fn mark_channel_read(
        &self,
        actor: Actor,
        server_id: Uuid,
        channel_id: Uuid,
        up_to: Uuid,
    ) -> Result<Position> {
        self.catch_up().await?;
        self.require_in_channel(actor, server_id, channel_id)
            .await?;
        let in_channel = self
            .store
            .channel_message(actor.user_id, up_to)
            .await?
            .is_some_and(|m| m.channel_id == channel_id);
        if !in_channel {
            return Err(DomainError::MessageNotFound(up_to).into());
        }
        let event = missive_events::Event::ChannelMessagesRead {
            server_id,
            channel_id,
            reader_id: actor.user_id,
            up_to,
        };
        Ok(self
            .append(actor, vec![event], Utc::now())
            .await?
            .unwrap_or(Position::new(0, 0)))
    }
}

/// The receipt of a channel message already in the read models.
fn receipt_of(m: &ChannelMessage, duplicate: bool) -> SendReceipt {
    SendReceipt {
        message_id: m.message_id,
        conversation_id: m.channel_id,
        sent_at: m.sent_at,
        position: m.position,
        duplicate,
    }
}
