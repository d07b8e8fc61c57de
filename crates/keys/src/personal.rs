//! Which fields are personal data, and where they are sealed and opened.
//!
//! | event | field | owner |
//! |---|---|---|
//! | `UserRegistered` | `username`, `display_name` | the user |
//! | `ProfileUpdated` | `display_name` | the user |
//! | `MessageSent` | `text` | the sender |
//! | `ChannelMessageSent` | `text` | the sender |
//! | `PostPublished` | `content` | the author |
//!
//! Ids, timestamps, server and channel names and tags are not sealed: they are not personal
//! data of one user, or are needed in the clear to route and order events.
//!
//! - [`seal_event`]: the service seals an event's personal fields just before appending it.
//! - [`OpenedStore`]: the read store as the rest of the application sees it. Projected user
//!   fields are opened as they are written (usernames must be unique and searchable in the
//!   clear); message, channel message and post texts stay sealed in the read models and are
//!   opened as they are read, so destroying a key shreds every copy at once, the read models'
//!   (and their backups') included. Projecting an account's deletion destroys its key, so the
//!   key is gone even if the process that appended the deletion died before destroying it.
//!
//! A shredded value reads as: the username `deleted-<id>` ([`deleted_username`]), an empty
//! display name, an empty text.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use missive_events::{AccountStatus, Event};
use missive_log::Position;
use missive_store::{
    Change, Channel, ChannelMessage, ChannelSummary, Conversation, FeedPage, FriendEntry,
    FriendshipState, HistoryQuery, Invitation, Message, Page, Post, ReadStore, Server, ServerRole,
    ServerSearch, StoreError, User, UserServer, deleted_username,
};
use uuid::Uuid;

use crate::{KeyRing, KeyVault, VaultError, is_sealed, seal, unseal};

/// Seals `event`'s personal fields with their owner's key (created on first use). Fields that
/// are already sealed are left as they are. `Err(VaultError::Destroyed)` when the owner's
/// account was deleted.
pub async fn seal_event(vault: &dyn KeyVault, event: &mut Event) -> Result<(), VaultError> {
    let (owner, fields): (Uuid, Vec<&mut String>) = match event {
        Event::UserRegistered {
            user_id,
            username,
            display_name,
        } => (*user_id, vec![username, display_name]),
        Event::ProfileUpdated {
            user_id,
            display_name,
        } => (*user_id, vec![display_name]),
        Event::MessageSent {
            sender_id, text, ..
        }
        | Event::ChannelMessageSent {
            sender_id, text, ..
        } => (*sender_id, vec![text]),
        Event::PostPublished {
            author_id, content, ..
        } => (*author_id, vec![content]),
        _ => return Ok(()),
    };
    let mut fields: Vec<&mut String> = fields.into_iter().filter(|f| !is_sealed(f)).collect();
    if fields.is_empty() {
        return Ok(());
    }
    let key = vault.create(owner).await?;
    for field in &mut fields {
        **field = seal(&key, owner, field);
    }
    Ok(())
}

impl From<VaultError> for StoreError {
    fn from(error: VaultError) -> Self {
        match error {
            VaultError::Unavailable(why) => StoreError::Unavailable(format!("key vault: {why}")),
            VaultError::Corrupt(why) => StoreError::Corrupt(format!("key vault: {why}")),
            VaultError::Destroyed => {
                StoreError::Corrupt("key vault: a destroyed key was asked for".into())
            }
        }
    }
}

/// A [`ReadStore`] whose personal fields are opened with their owners' keys (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct OpenedStore {
    inner: Arc<dyn ReadStore>,
    vault: Arc<dyn KeyVault>,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

impl OpenedStore {
    pub fn new(inner: Arc<dyn ReadStore>, vault: Arc<dyn KeyVault>) -> Self {
        OpenedStore { inner, vault }
    }

    pub fn vault(&self) -> &Arc<dyn KeyVault> {
        &self.vault
    }

    /// Opens the user fields of the changes about to be projected, and destroys the keys of
    /// deleted accounts.
    async fn open_changes(&self, changes: &mut [Change]) -> Result<(), StoreError> {
        for change in changes {
            match change {
                Change::AddUser {
                    user_id,
                    username,
                    display_name,
                    ..
                } => match self.open_owned(*user_id, &[username, display_name]).await? {
                    Some([name, display]) => {
                        *username = name;
                        *display_name = display;
                    }
                    None => {
                        *username = deleted_username(*user_id);
                        display_name.clear();
                    }
                },
                Change::SetDisplayName {
                    user_id,
                    display_name,
                    ..
                } => match self.open_owned(*user_id, &[display_name]).await? {
                    Some([display]) => *display_name = display,
                    None => display_name.clear(),
                },
                Change::SetAccountStatus {
                    user_id,
                    status: AccountStatus::Deleted,
                    ..
                } => self.vault.destroy(*user_id).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens `N` fields of one owner being projected: `None` when they are shredded.
    ///
    /// A sealed field whose owner has no key at all is an error, not a shredding: the key
    /// was made before the event was appended, so this process is not using the vault the
    /// service sealed with (a misconfiguration that must not scrub anyone's profile).
    async fn open_owned<const N: usize>(
        &self,
        owner: Uuid,
        fields: &[&mut String; N],
    ) -> Result<Option<[String; N]>, StoreError> {
        if !fields.iter().any(|f| is_sealed(f)) {
            return Ok(Some(std::array::from_fn(|i| fields[i].clone())));
        }
        let Some(key) = KeyRing::new(self.vault.as_ref()).key(owner).await? else {
            return Ok(None);
        };
        let mut opened: [String; N] = std::array::from_fn(|_| String::new());
        for (slot, field) in opened.iter_mut().zip(fields) {
            if !is_sealed(field) {
                slot.clone_from(field);
                continue;
            }
            // Not a shredding: the key is there. Projecting it as shredded would scrub a live
            // user (e.g. one whose key was lost and made again), so the projection stops.
            *slot = unseal(&key, owner, field).map_err(|error| {
                StoreError::Corrupt(format!(
                    "a sealed field of user {owner} does not open with their key: {error}"
                ))
            })?;
        }
        Ok(Some(opened))
    }
}

/// Opens one text in place: an empty text when it is shredded.
async fn open_text(
    ring: &mut KeyRing<'_>,
    owner: Uuid,
    text: &mut String,
) -> Result<(), StoreError> {
    if is_sealed(text) {
        *text = ring.unseal(owner, text).await?.unwrap_or_default();
    }
    Ok(())
}

async fn open_message(ring: &mut KeyRing<'_>, m: &mut Message) -> Result<(), StoreError> {
    if let Some(text) = &mut m.text {
        open_text(ring, m.sender_id, text).await?;
    }
    Ok(())
}

async fn open_messages(vault: &dyn KeyVault, messages: &mut [Message]) -> Result<(), StoreError> {
    let mut ring = KeyRing::new(vault);
    for m in messages {
        open_message(&mut ring, m).await?;
    }
    Ok(())
}

async fn open_channel_messages(
    vault: &dyn KeyVault,
    messages: &mut [ChannelMessage],
) -> Result<(), StoreError> {
    let mut ring = KeyRing::new(vault);
    for m in messages {
        open_text(&mut ring, m.sender_id, &mut m.text).await?;
    }
    Ok(())
}

#[async_trait]
impl ReadStore for OpenedStore {
    async fn apply(
        &self,
        projection: &str,
        mut changes: Vec<Change>,
        checkpoint: Vec<Position>,
    ) -> missive_store::Result<()> {
        self.open_changes(&mut changes).await?;
        self.inner.apply(projection, changes, checkpoint).await
    }

    async fn checkpoints(&self, projection: &str) -> missive_store::Result<Vec<Position>> {
        self.inner.checkpoints(projection).await
    }

    async fn tables(&self) -> missive_store::Result<Vec<String>> {
        self.inner.tables().await
    }

    async fn table_rows(&self, table: &str) -> missive_store::Result<Vec<String>> {
        self.inner.table_rows(table).await
    }

    async fn user(&self, id: Uuid) -> missive_store::Result<Option<User>> {
        self.inner.user(id).await
    }

    async fn user_by_username(&self, username: &str) -> missive_store::Result<Option<User>> {
        self.inner.user_by_username(username).await
    }

    async fn friendship(&self, a: Uuid, b: Uuid) -> missive_store::Result<FriendshipState> {
        self.inner.friendship(a, b).await
    }

    async fn friends(&self, user: Uuid) -> missive_store::Result<Vec<FriendEntry>> {
        self.inner.friends(user).await
    }

    async fn conversations(
        &self,
        user: Uuid,
        cursor: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Conversation>> {
        let mut page = self.inner.conversations(user, cursor, limit).await?;
        let mut ring = KeyRing::new(self.vault.as_ref());
        for c in &mut page.items {
            if let Some(m) = &mut c.last_message {
                open_message(&mut ring, m).await?;
            }
        }
        Ok(page)
    }

    async fn participants(
        &self,
        conversation: Uuid,
    ) -> missive_store::Result<Option<(Uuid, Uuid)>> {
        self.inner.participants(conversation).await
    }

    async fn history(
        &self,
        viewer: Uuid,
        conversation: Uuid,
        query: HistoryQuery,
    ) -> missive_store::Result<Page<Message>> {
        let mut page = self.inner.history(viewer, conversation, query).await?;
        open_messages(self.vault.as_ref(), &mut page.items).await?;
        Ok(page)
    }

    async fn messages_since(
        &self,
        user: Uuid,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<FeedPage> {
        let mut page = self.inner.messages_since(user, since, after, limit).await?;
        open_messages(self.vault.as_ref(), &mut page.items).await?;
        Ok(page)
    }

    async fn message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> missive_store::Result<Option<Message>> {
        let mut found = self.inner.message(viewer, message_id).await?;
        open_messages(self.vault.as_ref(), found.as_mut_slice()).await?;
        Ok(found)
    }

    async fn message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> missive_store::Result<Option<Message>> {
        let mut found = self
            .inner
            .message_by_client_id(sender, client_msg_id)
            .await?;
        open_messages(self.vault.as_ref(), found.as_mut_slice()).await?;
        Ok(found)
    }

    async fn pending(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Message>> {
        let mut page = self.inner.pending(user, after, limit).await?;
        open_messages(self.vault.as_ref(), &mut page.items).await?;
        Ok(page)
    }

    async fn online_users(&self) -> missive_store::Result<Vec<Uuid>> {
        self.inner.online_users().await
    }

    async fn restricted_accounts(&self) -> missive_store::Result<Vec<(Uuid, AccountStatus)>> {
        self.inner.restricted_accounts().await
    }

    async fn server(&self, id: Uuid) -> missive_store::Result<Option<Server>> {
        self.inner.server(id).await
    }

    async fn server_by_name(&self, name: &str) -> missive_store::Result<Option<Server>> {
        self.inner.server_by_name(name).await
    }

    async fn search_servers(
        &self,
        search: &ServerSearch,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Server>> {
        self.inner.search_servers(search, after, limit).await
    }

    async fn user_servers(
        &self,
        user: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<UserServer>> {
        self.inner.user_servers(user, after, limit).await
    }

    async fn membership(
        &self,
        server: Uuid,
        user: Uuid,
    ) -> missive_store::Result<Option<ServerRole>> {
        self.inner.membership(server, user).await
    }

    async fn invitation(&self, invitation_id: Uuid) -> missive_store::Result<Option<Invitation>> {
        self.inner.invitation(invitation_id).await
    }

    async fn pending_invitation(
        &self,
        server: Uuid,
        invitee: Uuid,
    ) -> missive_store::Result<Option<Invitation>> {
        self.inner.pending_invitation(server, invitee).await
    }

    async fn pending_invitations(
        &self,
        invitee: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Invitation>> {
        self.inner.pending_invitations(invitee, after, limit).await
    }

    async fn posts(
        &self,
        server: Uuid,
        before: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Post>> {
        let mut page = self.inner.posts(server, before, limit).await?;
        let mut ring = KeyRing::new(self.vault.as_ref());
        for post in &mut page.items {
            open_text(&mut ring, post.author_id, &mut post.content).await?;
        }
        Ok(page)
    }

    async fn channels(
        &self,
        server: Uuid,
        viewer: Uuid,
    ) -> missive_store::Result<Vec<ChannelSummary>> {
        self.inner.channels(server, viewer).await
    }

    async fn channel(&self, channel: Uuid) -> missive_store::Result<Option<Channel>> {
        self.inner.channel(channel).await
    }

    async fn current_channel(&self, user: Uuid) -> missive_store::Result<Option<Channel>> {
        self.inner.current_channel(user).await
    }

    async fn channel_members(
        &self,
        channel: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> missive_store::Result<Page<Uuid>> {
        self.inner.channel_members(channel, after, limit).await
    }

    async fn channel_history(
        &self,
        viewer: Uuid,
        channel: Uuid,
        query: HistoryQuery,
    ) -> missive_store::Result<Page<ChannelMessage>> {
        let mut page = self.inner.channel_history(viewer, channel, query).await?;
        open_channel_messages(self.vault.as_ref(), &mut page.items).await?;
        Ok(page)
    }

    async fn channel_message_by_client_id(
        &self,
        sender: Uuid,
        client_msg_id: &str,
    ) -> missive_store::Result<Option<ChannelMessage>> {
        let mut found = self
            .inner
            .channel_message_by_client_id(sender, client_msg_id)
            .await?;
        open_channel_messages(self.vault.as_ref(), found.as_mut_slice()).await?;
        Ok(found)
    }

    async fn channel_message(
        &self,
        viewer: Uuid,
        message_id: Uuid,
    ) -> missive_store::Result<Option<ChannelMessage>> {
        let mut found = self.inner.channel_message(viewer, message_id).await?;
        open_channel_messages(self.vault.as_ref(), found.as_mut_slice()).await?;
        Ok(found)
    }

    async fn latest_channel_message(
        &self,
        channel: Uuid,
    ) -> missive_store::Result<Option<ChannelMessage>> {
        let mut found = self.inner.latest_channel_message(channel).await?;
        open_channel_messages(self.vault.as_ref(), found.as_mut_slice()).await?;
        Ok(found)
    }
}
