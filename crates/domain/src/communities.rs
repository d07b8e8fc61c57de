//! Servers (communities): creation, subscriptions, invitations, posts and channels.
//!
//! A server has one owner, who is subscribed from its creation and can never unsubscribe.
//! Anyone may subscribe to a public server; a private one is joined by accepting an
//! invitation. Only the owner publishes posts and creates or deletes channels. A user is in
//! at most one channel at a time, across all servers: joining another leaves the previous
//! one. Only the channel's members send and read its messages.

use missive_events::{ChannelLeaveReason, Visibility};
use uuid::Uuid;

use crate::{DomainError, Event, Result, is_unprintable};

pub const SERVER_NAME_RULE: &str = "3 to 64 characters, without control characters, not blank";
pub const CHANNEL_NAME_RULE: &str =
    "1 to 32 characters: lower-case letters, digits, '-' or '_', starting with a letter or digit";
pub const TAG_RULE: &str =
    "at most 10 tags, each 1 to 32 characters: letters, digits, '-' or '_' (kept lower-case)";
/// Tags a server or a post may carry.
pub const MAX_TAGS: usize = 10;

/// A server as decisions need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerView {
    pub server_id: Uuid,
    pub owner_id: Uuid,
    pub visibility: Visibility,
}

/// What a user is to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Owner,
    Subscriber,
    /// Neither; `invited` if an invitation waits for their answer.
    Outsider {
        invited: bool,
    },
}

impl Membership {
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Owner | Membership::Subscriber)
    }
}

/// A channel: which server it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRef {
    pub server_id: Uuid,
    pub channel_id: Uuid,
}

/// Checks a server name and returns it trimmed.
pub fn validate_server_name(name: &str) -> Result<String> {
    let name = name.trim();
    let len = name.chars().count();
    if !(3..=64).contains(&len) || name.chars().any(is_unprintable) {
        return Err(DomainError::Invalid {
            field: "name",
            rule: SERVER_NAME_RULE.into(),
        });
    }
    Ok(name.to_owned())
}

/// Checks a channel name (channel names are already lower-case, so unique as given).
pub fn validate_channel_name(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field: "name",
            rule: CHANNEL_NAME_RULE.into(),
        })
    }
}

/// Checks tags and returns them lower-cased, without duplicates, in the order first given.
pub fn normalize_tags(tags: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let ok = (1..=32).contains(&tag.len())
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !ok {
            return Err(DomainError::Invalid {
                field: "tags",
                rule: format!("{TAG_RULE}; {tag:?} is not a tag"),
            });
        }
        let tag = tag.to_ascii_lowercase();
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(DomainError::Invalid {
            field: "tags",
            rule: TAG_RULE.into(),
        });
    }
    Ok(out)
}

/// The server a command names, if it exists.
fn existing(server: Option<ServerView>) -> Result<ServerView> {
    server.ok_or_else(|| DomainError::NotFound("no such server".into()))
}

/// Creates a server owned by `owner`. `name_taken`: another server has the name, in any case.
pub fn decide_create_server(
    server_id: Uuid,
    owner: Uuid,
    name: &str,
    tags: &[String],
    visibility: Visibility,
    name_taken: bool,
) -> Result<Vec<Event>> {
    let name = validate_server_name(name)?;
    let tags = normalize_tags(tags)?;
    if name_taken {
        return Err(DomainError::Conflict(format!(
            "a server named {name:?} exists already (names are unique, ignoring case)"
        )));
    }
    Ok(vec![Event::ServerCreated {
        server_id,
        owner_id: owner,
        name,
        tags,
        visibility,
    }])
}

/// Subscribes `actor`. A private server is subscribed to by accepting an invitation; a
/// pending invitation counts as accepted by subscribing.
pub fn decide_subscribe(
    server: Option<ServerView>,
    actor: Uuid,
    membership: Membership,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    let server_id = server.server_id;
    match membership {
        Membership::Owner | Membership::Subscriber => Ok(Vec::new()),
        Membership::Outsider { invited: true } => Ok(vec![
            Event::ServerInvitationAnswered {
                server_id,
                invitee_id: actor,
                accepted: true,
            },
            Event::ServerSubscribed {
                server_id,
                user_id: actor,
            },
        ]),
        Membership::Outsider { invited: false } if server.visibility == Visibility::Private => {
            Err(DomainError::Forbidden(
                "this server is private: it is joined by accepting an invitation",
            ))
        }
        Membership::Outsider { invited: false } => Ok(vec![Event::ServerSubscribed {
            server_id,
            user_id: actor,
        }]),
    }
}

/// Unsubscribes `actor`, who leaves their channel too if it is one of this server's.
/// `current` is the channel the actor is in, if any.
pub fn decide_unsubscribe(
    server: Option<ServerView>,
    actor: Uuid,
    membership: Membership,
    current: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    match membership {
        Membership::Owner => Err(DomainError::Forbidden(
            "the owner cannot unsubscribe from their own server",
        )),
        Membership::Outsider { .. } => Ok(Vec::new()),
        Membership::Subscriber => {
            let mut events = Vec::new();
            if let Some(channel) = current.filter(|c| c.server_id == server.server_id) {
                events.push(Event::ChannelLeft {
                    user_id: actor,
                    server_id: channel.server_id,
                    channel_id: channel.channel_id,
                    reason: ChannelLeaveReason::Unsubscribed,
                });
            }
            events.push(Event::ServerUnsubscribed {
                server_id: server.server_id,
                user_id: actor,
            });
            Ok(events)
        }
    }
}

/// Invites `invitee`. Subscribers may invite to a public server, only the owner to a private
/// one. `invitee_membership` is `None` when no such user exists.
pub fn decide_invite(
    server: Option<ServerView>,
    actor: Uuid,
    actor_membership: Membership,
    invitee: Uuid,
    invitee_membership: Option<Membership>,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    let allowed = match server.visibility {
        Visibility::Public => actor_membership.is_member(),
        Visibility::Private => actor_membership == Membership::Owner,
    };
    if !allowed {
        return Err(DomainError::Forbidden(match server.visibility {
            Visibility::Public => "only the server's subscribers may invite to it",
            Visibility::Private => "only the owner may invite to a private server",
        }));
    }
    if invitee == actor {
        return Err(DomainError::Invalid {
            field: "user_id",
            rule: "must be another user: you cannot invite yourself".into(),
        });
    }
    match invitee_membership {
        None => Err(DomainError::UserNotFound(invitee)),
        Some(Membership::Owner | Membership::Subscriber) => Err(DomainError::Conflict(format!(
            "user {invitee} is subscribed to this server already"
        ))),
        Some(Membership::Outsider { invited: true }) => Ok(Vec::new()),
        Some(Membership::Outsider { invited: false }) => Ok(vec![Event::ServerInvitationSent {
            server_id: server.server_id,
            inviter_id: actor,
            invitee_id: invitee,
        }]),
    }
}

/// Accepts (subscribing) or declines the invitation waiting for `actor`. Accepting again once
/// subscribed (a retried request) changes nothing.
pub fn decide_answer_invitation(
    server: Option<ServerView>,
    actor: Uuid,
    membership: Membership,
    accept: bool,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    if accept && membership.is_member() {
        return Ok(Vec::new());
    }
    if membership != (Membership::Outsider { invited: true }) {
        return Err(DomainError::NotFound(format!(
            "no invitation to server {} waits for your answer",
            server.server_id
        )));
    }
    let mut events = vec![Event::ServerInvitationAnswered {
        server_id: server.server_id,
        invitee_id: actor,
        accepted: accept,
    }];
    if accept {
        events.push(Event::ServerSubscribed {
            server_id: server.server_id,
            user_id: actor,
        });
    }
    Ok(events)
}

/// Publishes a post: the owner only.
pub fn decide_publish_post(
    server: Option<ServerView>,
    actor: Uuid,
    post_id: Uuid,
    content: &str,
    tags: &[String],
    max_chars: usize,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    if server.owner_id != actor {
        return Err(DomainError::Forbidden(
            "only the server's owner may publish posts",
        ));
    }
    crate::messages::validate_text(content, max_chars).map_err(|e| match e {
        DomainError::Invalid { rule, .. } => DomainError::Invalid {
            field: "content",
            rule,
        },
        other => other,
    })?;
    Ok(vec![Event::PostPublished {
        post_id,
        server_id: server.server_id,
        author_id: actor,
        content: content.to_owned(),
        tags: normalize_tags(tags)?,
    }])
}

/// Whether a user may read a server's posts: anyone for a public server, members for a
/// private one.
pub fn may_read_posts(server: ServerView, membership: Membership) -> bool {
    server.visibility == Visibility::Public || membership.is_member()
}

/// Creates a channel: the owner only; `name_taken` if the server has one of that name.
pub fn decide_create_channel(
    server: Option<ServerView>,
    actor: Uuid,
    channel_id: Uuid,
    name: &str,
    name_taken: bool,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    if server.owner_id != actor {
        return Err(DomainError::Forbidden(
            "only the server's owner may create channels",
        ));
    }
    validate_channel_name(name)?;
    if name_taken {
        return Err(DomainError::Conflict(format!(
            "this server has a channel named {name:?} already"
        )));
    }
    Ok(vec![Event::ChannelCreated {
        channel_id,
        server_id: server.server_id,
        name: name.to_owned(),
        created_by: actor,
    }])
}

/// Deletes a channel: the owner only. `channel` is the channel if it exists (in any server).
pub fn decide_delete_channel(
    server: Option<ServerView>,
    actor: Uuid,
    channel_id: Uuid,
    channel: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let server = existing(server)?;
    if server.owner_id != actor {
        return Err(DomainError::Forbidden(
            "only the server's owner may delete channels",
        ));
    }
    if channel.is_none_or(|c| c.server_id != server.server_id) {
        return Err(channel_not_found(channel_id));
    }
    Ok(vec![Event::ChannelDeleted {
        channel_id,
        server_id: server.server_id,
        deleted_by: actor,
    }])
}

fn channel_not_found(channel_id: Uuid) -> DomainError {
    DomainError::NotFound(format!("no channel with id {channel_id} in this server"))
}

/// The channel `target` if it exists and belongs to `server_id` (the server the request
/// names): a channel id of another server is not found there.
fn channel_in(target: Option<ChannelRef>, server_id: Uuid) -> Result<ChannelRef> {
    target
        .filter(|c| c.server_id == server_id)
        .ok_or_else(|| DomainError::NotFound("no such channel in this server".into()))
}

/// Joins a channel of a server the actor is a member of, leaving the channel they were in.
/// `server_id` is the server the request names.
pub fn decide_join_channel(
    server_id: Uuid,
    target: Option<ChannelRef>,
    actor: Uuid,
    membership: Membership,
    current: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let target = channel_in(target, server_id)?;
    if !membership.is_member() {
        return Err(DomainError::Forbidden(
            "subscribe to the server before joining its channels",
        ));
    }
    if current == Some(target) {
        return Ok(Vec::new());
    }
    let mut events = Vec::new();
    if let Some(previous) = current {
        events.push(Event::ChannelLeft {
            user_id: actor,
            server_id: previous.server_id,
            channel_id: previous.channel_id,
            reason: ChannelLeaveReason::Switched,
        });
    }
    events.push(Event::ChannelJoined {
        user_id: actor,
        server_id: target.server_id,
        channel_id: target.channel_id,
    });
    Ok(events)
}

/// Leaves a channel; leaving one the actor is not in changes nothing.
pub fn decide_leave_channel(
    server_id: Uuid,
    target: Option<ChannelRef>,
    actor: Uuid,
    current: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let target = channel_in(target, server_id)?;
    if current != Some(target) {
        return Ok(Vec::new());
    }
    Ok(vec![Event::ChannelLeft {
        user_id: actor,
        server_id: target.server_id,
        channel_id: target.channel_id,
        reason: ChannelLeaveReason::Left,
    }])
}

/// What a channel message needs to know about where it goes and who sends it.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSend<'a> {
    /// The server the request names.
    pub server_id: Uuid,
    pub target: Option<ChannelRef>,
    pub actor: Uuid,
    /// The actor's membership of the server: a channel's members must still be subscribed
    /// (a membership left behind by a race with unsubscribing does not count).
    pub membership: Membership,
    pub current: Option<ChannelRef>,
    pub message_id: Uuid,
    pub text: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub max_chars: usize,
}

/// Sends a message to a channel: its members only (the users in it now, subscribed to its
/// server).
pub fn decide_send_channel_message(cmd: ChannelSend<'_>) -> Result<Vec<Event>> {
    let ChannelSend {
        server_id,
        target,
        actor,
        membership,
        current,
        message_id,
        text,
        client_msg_id,
        max_chars,
    } = cmd;
    let target = channel_in(target, server_id)?;
    if current != Some(target) || !membership.is_member() {
        return Err(DomainError::Forbidden(
            "join the channel before sending to it: only its members may",
        ));
    }
    crate::messages::validate_text(text, max_chars)?;
    if let Some(id) = client_msg_id {
        crate::messages::validate_client_msg_id(id)?;
    }
    Ok(vec![Event::ChannelMessageSent {
        message_id,
        server_id: target.server_id,
        channel_id: target.channel_id,
        sender_id: actor,
        text: text.to_owned(),
        client_msg_id: client_msg_id.map(str::to_owned),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7())
    }

    fn server(owner: Uuid, visibility: Visibility) -> ServerView {
        ServerView {
            server_id: Uuid::now_v7(),
            owner_id: owner,
            visibility,
        }
    }

    const OUTSIDER: Membership = Membership::Outsider { invited: false };
    const INVITED: Membership = Membership::Outsider { invited: true };

    #[test]
    fn a_server_is_created_with_a_valid_unique_name_and_normalized_tags() {
        let (id, owner, _) = ids();
        let tags = vec!["Rust".to_owned(), "rust".to_owned(), "chat-apps".to_owned()];
        let events =
            decide_create_server(id, owner, "  Rustaceans ", &tags, Visibility::Public, false)
                .expect("created");
        assert_eq!(
            events,
            vec![Event::ServerCreated {
                server_id: id,
                owner_id: owner,
                name: "Rustaceans".into(),
                tags: vec!["rust".into(), "chat-apps".into()],
                visibility: Visibility::Public,
            }]
        );
        assert!(matches!(
            decide_create_server(id, owner, "Rustaceans", &[], Visibility::Public, true),
            Err(DomainError::Conflict(m)) if m.contains("exists already")
        ));
        for bad in ["ab", "   ", "tab\there", &"x".repeat(65)] {
            assert!(
                matches!(
                    decide_create_server(id, owner, bad, &[], Visibility::Public, false),
                    Err(DomainError::Invalid { field: "name", .. })
                ),
                "{bad:?}"
            );
        }
        let too_many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        for tags in [vec!["no spaces".to_owned()], vec![String::new()], too_many] {
            assert!(matches!(
                decide_create_server(id, owner, "Fine name", &tags, Visibility::Public, false),
                Err(DomainError::Invalid { field: "tags", .. })
            ));
        }
    }

    #[test]
    fn subscribing_follows_visibility_and_invitations() {
        let (owner, user, _) = ids();
        let public = server(owner, Visibility::Public);
        let private = server(owner, Visibility::Private);
        assert_eq!(
            decide_subscribe(Some(public), user, OUTSIDER).expect("ok"),
            vec![Event::ServerSubscribed {
                server_id: public.server_id,
                user_id: user
            }]
        );
        assert!(matches!(
            decide_subscribe(Some(private), user, OUTSIDER),
            Err(DomainError::Forbidden(m)) if m.contains("private")
        ));
        assert_eq!(
            decide_subscribe(Some(private), user, INVITED).expect("ok"),
            vec![
                Event::ServerInvitationAnswered {
                    server_id: private.server_id,
                    invitee_id: user,
                    accepted: true
                },
                Event::ServerSubscribed {
                    server_id: private.server_id,
                    user_id: user
                }
            ]
        );
        // Again, or as the owner: nothing changes.
        assert!(
            decide_subscribe(Some(public), user, Membership::Subscriber)
                .expect("ok")
                .is_empty()
        );
        assert!(
            decide_subscribe(Some(public), owner, Membership::Owner)
                .expect("ok")
                .is_empty()
        );
        assert!(matches!(
            decide_subscribe(None, user, OUTSIDER),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn the_owner_cannot_unsubscribe_and_a_subscriber_leaves_the_servers_channel() {
        let (owner, user, _) = ids();
        let s = server(owner, Visibility::Public);
        assert!(matches!(
            decide_unsubscribe(Some(s), owner, Membership::Owner, None),
            Err(DomainError::Forbidden(m)) if m.contains("owner")
        ));
        let here = ChannelRef {
            server_id: s.server_id,
            channel_id: Uuid::now_v7(),
        };
        let elsewhere = ChannelRef {
            server_id: Uuid::now_v7(),
            channel_id: Uuid::now_v7(),
        };
        assert_eq!(
            decide_unsubscribe(Some(s), user, Membership::Subscriber, Some(here)).expect("ok"),
            vec![
                Event::ChannelLeft {
                    user_id: user,
                    server_id: s.server_id,
                    channel_id: here.channel_id,
                    reason: ChannelLeaveReason::Unsubscribed
                },
                Event::ServerUnsubscribed {
                    server_id: s.server_id,
                    user_id: user
                }
            ]
        );
        assert_eq!(
            decide_unsubscribe(Some(s), user, Membership::Subscriber, Some(elsewhere))
                .expect("ok")
                .len(),
            1,
            "a channel of another server is kept"
        );
        assert!(
            decide_unsubscribe(Some(s), user, OUTSIDER, None)
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn invitations_need_a_member_an_outsider_and_are_sent_once() {
        let (owner, member, invitee) = ids();
        let public = server(owner, Visibility::Public);
        let private = server(owner, Visibility::Private);
        let sent = decide_invite(
            Some(public),
            member,
            Membership::Subscriber,
            invitee,
            Some(OUTSIDER),
        )
        .expect("sent");
        assert_eq!(
            sent,
            vec![Event::ServerInvitationSent {
                server_id: public.server_id,
                inviter_id: member,
                invitee_id: invitee
            }]
        );
        assert!(
            decide_invite(
                Some(public),
                member,
                Membership::Subscriber,
                invitee,
                Some(INVITED)
            )
            .expect("ok")
            .is_empty(),
            "a second invitation changes nothing"
        );
        assert!(matches!(
            decide_invite(Some(public), invitee, OUTSIDER, member, Some(OUTSIDER)),
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            decide_invite(Some(private), member, Membership::Subscriber, invitee, Some(OUTSIDER)),
            Err(DomainError::Forbidden(m)) if m.contains("private")
        ));
        assert!(
            decide_invite(
                Some(private),
                owner,
                Membership::Owner,
                invitee,
                Some(OUTSIDER)
            )
            .is_ok()
        );
        assert!(matches!(
            decide_invite(
                Some(public),
                owner,
                Membership::Owner,
                member,
                Some(Membership::Subscriber)
            ),
            Err(DomainError::Conflict(_))
        ));
        assert!(matches!(
            decide_invite(Some(public), owner, Membership::Owner, invitee, None),
            Err(DomainError::UserNotFound(id)) if id == invitee
        ));
        assert!(matches!(
            decide_invite(
                Some(public),
                owner,
                Membership::Owner,
                owner,
                Some(Membership::Owner)
            ),
            Err(DomainError::Invalid { .. })
        ));
    }

    #[test]
    fn an_invitation_is_accepted_by_subscribing_or_declined() {
        let (owner, invitee, _) = ids();
        let s = server(owner, Visibility::Private);
        let accepted = decide_answer_invitation(Some(s), invitee, INVITED, true).expect("ok");
        assert_eq!(accepted.len(), 2);
        assert!(
            matches!(accepted[1], Event::ServerSubscribed { user_id, .. } if user_id == invitee)
        );
        assert_eq!(
            decide_answer_invitation(Some(s), invitee, INVITED, false).expect("ok"),
            vec![Event::ServerInvitationAnswered {
                server_id: s.server_id,
                invitee_id: invitee,
                accepted: false
            }]
        );
        assert!(matches!(
            decide_answer_invitation(Some(s), invitee, OUTSIDER, true),
            Err(DomainError::NotFound(_))
        ));
        // A retried accept changes nothing; declining without an invitation is not found.
        assert!(
            decide_answer_invitation(Some(s), invitee, Membership::Subscriber, true)
                .expect("ok")
                .is_empty()
        );
        assert!(matches!(
            decide_answer_invitation(Some(s), invitee, Membership::Subscriber, false),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn only_the_owner_publishes_posts_and_private_posts_are_for_members() {
        let (owner, user, post) = ids();
        let s = server(owner, Visibility::Private);
        let events =
            decide_publish_post(Some(s), owner, post, "hello", &["News".into()], 100).expect("ok");
        assert_eq!(
            events,
            vec![Event::PostPublished {
                post_id: post,
                server_id: s.server_id,
                author_id: owner,
                content: "hello".into(),
                tags: vec!["news".into()]
            }]
        );
        assert!(matches!(
            decide_publish_post(Some(s), user, post, "hello", &[], 100),
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            decide_publish_post(Some(s), owner, post, "  ", &[], 100),
            Err(DomainError::Invalid {
                field: "content",
                ..
            })
        ));
        assert!(matches!(
            decide_publish_post(Some(s), owner, post, &"x".repeat(101), &[], 100),
            Err(DomainError::TooLong { len: 101, max: 100 })
        ));
        assert!(!may_read_posts(s, OUTSIDER));
        assert!(may_read_posts(s, Membership::Subscriber));
        assert!(may_read_posts(server(owner, Visibility::Public), INVITED));
    }

    #[test]
    fn channels_are_the_owners_with_unique_valid_names() {
        let (owner, user, channel) = ids();
        let s = server(owner, Visibility::Public);
        assert!(decide_create_channel(Some(s), owner, channel, "general", false).is_ok());
        assert!(matches!(
            decide_create_channel(Some(s), user, channel, "general", false),
            Err(DomainError::Forbidden(_))
        ));
        assert!(matches!(
            decide_create_channel(Some(s), owner, channel, "general", true),
            Err(DomainError::Conflict(_))
        ));
        for bad in ["", "General", "with space", "-dash", &"x".repeat(33)] {
            assert!(
                matches!(
                    decide_create_channel(Some(s), owner, channel, bad, false),
                    Err(DomainError::Invalid { field: "name", .. })
                ),
                "{bad:?}"
            );
        }
        let here = ChannelRef {
            server_id: s.server_id,
            channel_id: channel,
        };
        assert!(decide_delete_channel(Some(s), owner, channel, Some(here)).is_ok());
        assert!(matches!(
            decide_delete_channel(Some(s), user, channel, Some(here)),
            Err(DomainError::Forbidden(_))
        ));
        let other = ChannelRef {
            server_id: Uuid::now_v7(),
            channel_id: channel,
        };
        for channel_ref in [None, Some(other)] {
            assert!(matches!(
                decide_delete_channel(Some(s), owner, channel, channel_ref),
                Err(DomainError::NotFound(_))
            ));
        }
    }

    #[test]
    fn a_user_is_in_one_channel_at_a_time_across_servers() {
        let user = Uuid::now_v7();
        let a = ChannelRef {
            server_id: Uuid::now_v7(),
            channel_id: Uuid::now_v7(),
        };
        let b = ChannelRef {
            server_id: Uuid::now_v7(),
            channel_id: Uuid::now_v7(),
        };
        assert_eq!(
            decide_join_channel(a.server_id, Some(a), user, Membership::Subscriber, None)
                .expect("ok"),
            vec![Event::ChannelJoined {
                user_id: user,
                server_id: a.server_id,
                channel_id: a.channel_id
            }]
        );
        assert_eq!(
            decide_join_channel(b.server_id, Some(b), user, Membership::Owner, Some(a))
                .expect("ok"),
            vec![
                Event::ChannelLeft {
                    user_id: user,
                    server_id: a.server_id,
                    channel_id: a.channel_id,
                    reason: ChannelLeaveReason::Switched
                },
                Event::ChannelJoined {
                    user_id: user,
                    server_id: b.server_id,
                    channel_id: b.channel_id
                }
            ]
        );
        assert!(
            decide_join_channel(b.server_id, Some(b), user, Membership::Subscriber, Some(b))
                .expect("ok")
                .is_empty()
        );
        assert!(matches!(
            decide_join_channel(a.server_id, Some(a), user, INVITED, None),
            Err(DomainError::Forbidden(_))
        ));
        for (path, target) in [(a.server_id, None), (b.server_id, Some(a))] {
            assert!(matches!(
                decide_join_channel(path, target, user, Membership::Subscriber, None),
                Err(DomainError::NotFound(_))
            ));
        }
        assert_eq!(
            decide_leave_channel(b.server_id, Some(b), user, Some(b)).expect("ok"),
            vec![Event::ChannelLeft {
                user_id: user,
                server_id: b.server_id,
                channel_id: b.channel_id,
                reason: ChannelLeaveReason::Left
            }]
        );
        assert!(
            decide_leave_channel(a.server_id, Some(a), user, Some(b))
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn only_a_channels_members_send_to_it() {
        let (user, message, _) = ids();
        let here = ChannelRef {
            server_id: Uuid::now_v7(),
            channel_id: Uuid::now_v7(),
        };
        let send = ChannelSend {
            server_id: here.server_id,
            target: Some(here),
            actor: user,
            membership: Membership::Subscriber,
            current: Some(here),
            message_id: message,
            text: "hi",
            client_msg_id: Some("c1"),
            max_chars: 10,
        };
        assert_eq!(
            decide_send_channel_message(send).expect("sent"),
            vec![Event::ChannelMessageSent {
                message_id: message,
                server_id: here.server_id,
                channel_id: here.channel_id,
                sender_id: user,
                text: "hi".into(),
                client_msg_id: Some("c1".into())
            }]
        );
        // Not in the channel, or in it but no longer subscribed to its server.
        for refused in [
            ChannelSend {
                current: None,
                ..send
            },
            ChannelSend {
                membership: OUTSIDER,
                ..send
            },
        ] {
            assert!(matches!(
                decide_send_channel_message(refused),
                Err(DomainError::Forbidden(_))
            ));
        }
        // The channel named under another server is not found there.
        assert!(matches!(
            decide_send_channel_message(ChannelSend {
                server_id: Uuid::now_v7(),
                ..send
            }),
            Err(DomainError::NotFound(_))
        ));
        for invalid in [
            ChannelSend { text: "", ..send },
            ChannelSend {
                client_msg_id: Some("has space"),
                ..send
            },
        ] {
            assert!(matches!(
                decide_send_channel_message(invalid),
                Err(DomainError::Invalid { .. })
            ));
        }
    }
}
