//! Servers (communities): creation, subscriptions, invitations, posts and channels.
//!
//! A server has one owner, who is subscribed from its creation and can never unsubscribe.
//! Anyone may subscribe to a public server; a private one is joined by accepting an
//! invitation. Only the owner publishes posts and creates or deletes channels. A user is in
//! at most one channel at a time, across all servers: joining another leaves the previous
//! one. Only the channel's members send and read its messages.
//!
//! A private server does not exist for an outsider without an invitation: every command on it
//! is refused as [`DomainError::ServerNotFound`], never as forbidden, so its id cannot be
//! probed. Members who may not do something (a subscriber publishing a post) are forbidden.

use missive_events::{ChannelLeaveReason, InvitationOutcome, NotificationKind, Visibility};
use uuid::Uuid;

use crate::{DomainError, Event, Result, is_unprintable};

pub const SERVER_NAME_RULE: &str = "3 to 64 characters, without control characters, not blank";
pub const CHANNEL_NAME_RULE: &str =
    "1 to 32 characters: lower-case letters, digits, '-' or '_', starting with a letter or digit";
pub const TAG_RULE: &str =
    "at most 10 tags, each 1 to 32 characters: letters, digits, '-' or '_' (kept lower-case)";
/// Tags a server or a post may carry.
pub const MAX_TAGS: usize = 10;
/// Channels a server may have at once.
pub const MAX_CHANNELS: usize = 500;

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
    /// Neither; `invitation` is the invitation that waits for their answer, if one does.
    Outsider {
        invitation: Option<Uuid>,
    },
}

impl Membership {
    pub fn is_member(self) -> bool {
        matches!(self, Membership::Owner | Membership::Subscriber)
    }
}

/// An invitation as decisions need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationView {
    pub invitation_id: Uuid,
    pub server_id: Uuid,
    pub invitee_id: Uuid,
    /// `None` while it waits for an answer.
    pub answer: Option<InvitationOutcome>,
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

/// The server a command names, if it exists and the actor may know it does: a private server
/// is not found by an outsider without an invitation.
pub fn reachable(server: Option<ServerView>, membership: Membership) -> Result<ServerView> {
    server
        .filter(|s| may_see(*s, membership))
        .ok_or(DomainError::ServerNotFound)
}

/// Whether a user may know the server exists: anyone for a public server; members and invited
/// users for a private one.
pub fn may_see(server: ServerView, membership: Membership) -> bool {
    server.visibility == Visibility::Public
        || membership.is_member()
        || matches!(
            membership,
            Membership::Outsider {
                invitation: Some(_)
            }
        )
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
        return Err(DomainError::ServerNameTaken(name));
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
    let server = reachable(server, membership)?;
    let server_id = server.server_id;
    match membership {
        Membership::Owner | Membership::Subscriber => Ok(Vec::new()),
        Membership::Outsider {
            invitation: Some(invitation_id),
            // Subscribed first: if the second append fails (Kafka appends are not atomic across
            // partitions), the user is in and the invitation still pending, to be answered again.
        } => Ok(vec![
            Event::ServerSubscribed {
                server_id,
                user_id: actor,
            },
            Event::ServerInvitationAnswered {
                invitation_id,
                server_id,
                invitee_id: actor,
                outcome: InvitationOutcome::Accepted,
            },
        ]),
        // `reachable` let an outsider without an invitation through: the server is public.
        Membership::Outsider { invitation: None } => Ok(vec![Event::ServerSubscribed {
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
    let server = reachable(server, membership)?;
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

/// What an invitation needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Invite {
    pub server: Option<ServerView>,
    pub actor: Uuid,
    pub actor_membership: Membership,
    pub invitee: Uuid,
    /// `None` when no such user exists.
    pub invitee_membership: Option<Membership>,
    /// The id the new invitation gets.
    pub invitation_id: Uuid,
}

/// Invites `invitee`: the invitation, and a notification for the push service. Subscribers
/// may invite to a public server, only the owner to a private one. Inviting someone already
/// invited changes nothing.
pub fn decide_invite(cmd: Invite) -> Result<Vec<Event>> {
    let Invite {
        server,
        actor,
        actor_membership,
        invitee,
        invitee_membership,
        invitation_id,
    } = cmd;
    let server = reachable(server, actor_membership)?;
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
        Some(Membership::Owner | Membership::Subscriber) => {
            Err(DomainError::AlreadySubscribed(invitee))
        }
        Some(Membership::Outsider {
            invitation: Some(_),
        }) => Ok(Vec::new()),
        Some(Membership::Outsider { invitation: None }) => Ok(vec![
            Event::ServerInvitationSent {
                invitation_id,
                server_id: server.server_id,
                inviter_id: actor,
                invitee_id: invitee,
            },
            Event::NotificationRequested {
                user_id: invitee,
                kind: NotificationKind::Invitation,
                subject_id: server.server_id,
                item_id: invitation_id,
                from_id: actor,
            },
        ]),
    }
}

/// Accepts (subscribing) or declines an invitation to `actor`. Repeating an answer (a retried
/// request) changes nothing; changing it is a conflict. `membership` is the actor's of the
/// invitation's server: accepting while already subscribed only answers the invitation.
pub fn decide_answer_invitation(
    invitation: Option<InvitationView>,
    invitation_id: Uuid,
    actor: Uuid,
    membership: Membership,
    accept: bool,
) -> Result<Vec<Event>> {
    let invitation = invitation
        .filter(|i| i.invitation_id == invitation_id && i.invitee_id == actor)
        .ok_or(DomainError::InvitationNotFound(invitation_id))?;
    let wanted = if accept {
        InvitationOutcome::Accepted
    } else {
        InvitationOutcome::Declined
    };
    match invitation.answer {
        Some(answer) if answer == wanted => return Ok(Vec::new()),
        Some(answer) => {
            return Err(DomainError::Conflict(format!(
                "invitation {invitation_id} was {} already",
                match answer {
                    InvitationOutcome::Accepted => "accepted",
                    InvitationOutcome::Declined => "declined",
                }
            )));
        }
        None => {}
    }
    let server_id = invitation.server_id;
    // Subscribed first, as in `decide_subscribe`: a retry after a partial append completes it.
    let mut events = Vec::new();
    if accept && !membership.is_member() {
        events.push(Event::ServerSubscribed {
            server_id,
            user_id: actor,
        });
    }
    events.push(Event::ServerInvitationAnswered {
        invitation_id,
        server_id,
        invitee_id: actor,
        outcome: wanted,
    });
    Ok(events)
}

/// What a post needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub server: Option<ServerView>,
    pub actor: Uuid,
    pub membership: Membership,
    pub post_id: Uuid,
    pub content: &'a str,
    pub tags: &'a [String],
    pub max_chars: usize,
}

/// Publishes a post: the owner only.
pub fn decide_publish_post(cmd: Publish<'_>) -> Result<Vec<Event>> {
    let Publish {
        server,
        actor,
        membership,
        post_id,
        content,
        tags,
        max_chars,
    } = cmd;
    let server = reachable(server, membership)?;
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

/// What creating a channel needs to know.
#[derive(Debug, Clone, Copy)]
pub struct CreateChannel<'a> {
    pub server: Option<ServerView>,
    pub actor: Uuid,
    pub membership: Membership,
    pub channel_id: Uuid,
    pub name: &'a str,
    /// The names of the server's channels now.
    pub existing: &'a [&'a str],
}

/// Creates a channel: the owner only, with a name no other channel of the server has, up to
/// [`MAX_CHANNELS`].
pub fn decide_create_channel(cmd: CreateChannel<'_>) -> Result<Vec<Event>> {
    let CreateChannel {
        server,
        actor,
        membership,
        channel_id,
        name,
        existing,
    } = cmd;
    let server = reachable(server, membership)?;
    if server.owner_id != actor {
        return Err(DomainError::Forbidden(
            "only the server's owner may create channels",
        ));
    }
    validate_channel_name(name)?;
    if existing.contains(&name) {
        return Err(DomainError::ChannelNameTaken(name.to_owned()));
    }
    if existing.len() >= MAX_CHANNELS {
        return Err(DomainError::Conflict(format!(
            "a server has at most {MAX_CHANNELS} channels; delete one first"
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
    membership: Membership,
    channel_id: Uuid,
    channel: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let server = reachable(server, membership)?;
    if server.owner_id != actor {
        return Err(DomainError::Forbidden(
            "only the server's owner may delete channels",
        ));
    }
    channel_in(channel, server.server_id, channel_id)?;
    Ok(vec![Event::ChannelDeleted {
        channel_id,
        server_id: server.server_id,
        deleted_by: actor,
    }])
}

/// The channel `target` if it exists and belongs to `server_id` (the server the request
/// names): a channel id of another server is not found there.
fn channel_in(target: Option<ChannelRef>, server_id: Uuid, channel_id: Uuid) -> Result<ChannelRef> {
    target
        .filter(|c| c.server_id == server_id && c.channel_id == channel_id)
        .ok_or(DomainError::ChannelNotFound(channel_id))
}

/// What joining a channel needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    /// The server the request names.
    pub server: Option<ServerView>,
    /// The channel the request names, and the channel of that id if it exists.
    pub channel_id: Uuid,
    pub target: Option<ChannelRef>,
    pub actor: Uuid,
    pub membership: Membership,
    pub current: Option<ChannelRef>,
    /// The channel's latest message, when the actor's read marker should start there (a
    /// first join does not make the channel's whole history unread).
    pub mark_read_up_to: Option<Uuid>,
}

/// Joins a channel of a server the actor is a member of, leaving the channel they were in.
pub fn decide_join_channel(cmd: Join) -> Result<Vec<Event>> {
    let Join {
        server,
        channel_id,
        target,
        actor,
        membership,
        current,
        mark_read_up_to,
    } = cmd;
    let server = reachable(server, membership)?;
    let target = channel_in(target, server.server_id, channel_id)?;
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
    if let Some(up_to) = mark_read_up_to {
        events.push(Event::ChannelMessagesRead {
            server_id: target.server_id,
            channel_id: target.channel_id,
            reader_id: actor,
            up_to,
        });
    }
    Ok(events)
}

/// Leaves a channel; leaving one the actor is not in changes nothing. `server_id` and
/// `channel_id` are the ones the request names.
pub fn decide_leave_channel(
    server_id: Uuid,
    channel_id: Uuid,
    target: Option<ChannelRef>,
    actor: Uuid,
    current: Option<ChannelRef>,
) -> Result<Vec<Event>> {
    let target = channel_in(target, server_id, channel_id)?;
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
    /// The server and channel the request names.
    pub server_id: Uuid,
    pub channel_id: Uuid,
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
        channel_id,
        target,
        actor,
        membership,
        current,
        message_id,
        text,
        client_msg_id,
        max_chars,
    } = cmd;
    let target = channel_in(target, server_id, channel_id)?;
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

    const OWNER: Uuid = Uuid::from_u128(1);
    const USER: Uuid = Uuid::from_u128(2);
    const OTHER: Uuid = Uuid::from_u128(3);
    const INVITATION: Uuid = Uuid::from_u128(10);
    const NEW_INVITATION: Uuid = Uuid::from_u128(11);
    const POST: Uuid = Uuid::from_u128(20);
    const MESSAGE: Uuid = Uuid::from_u128(30);
    const LATEST: Uuid = Uuid::from_u128(31);

    const OUTSIDER: Membership = Membership::Outsider { invitation: None };
    const INVITED: Membership = Membership::Outsider {
        invitation: Some(INVITATION),
    };
    const EVERYONE: [Membership; 4] =
        [Membership::Owner, Membership::Subscriber, INVITED, OUTSIDER];

    /// A server owned by [`OWNER`], with a fresh id.
    fn server(visibility: Visibility) -> ServerView {
        ServerView {
            server_id: Uuid::now_v7(),
            owner_id: OWNER,
            visibility,
        }
    }

    /// A fresh channel of `server_id`.
    fn channel_of(server_id: Uuid) -> ChannelRef {
        ChannelRef {
            server_id,
            channel_id: Uuid::now_v7(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[track_caller]
    fn forbidden(result: Result<Vec<Event>>) -> &'static str {
        match result {
            Err(DomainError::Forbidden(why)) => why,
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }

    #[track_caller]
    fn invalid_field(result: Result<Vec<Event>>) -> &'static str {
        match result {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[track_caller]
    fn conflict(result: Result<Vec<Event>>) -> String {
        match result {
            Err(DomainError::Conflict(why)) => why,
            other => panic!("expected Conflict, got {other:?}"),
        }
    }

    mod visibility {
        use super::*;

        #[test]
        fn given_a_public_server_then_everyone_may_see_it() {
            let public = server(Visibility::Public);
            for membership in EVERYONE {
                assert!(may_see(public, membership), "{membership:?}");
                assert_eq!(reachable(Some(public), membership), Ok(public));
            }
        }

        #[test]
        fn given_a_private_server_then_members_and_invited_users_see_it_and_others_do_not() {
            let private = server(Visibility::Private);
            for membership in [Membership::Owner, Membership::Subscriber, INVITED] {
                assert!(may_see(private, membership), "{membership:?}");
                assert_eq!(reachable(Some(private), membership), Ok(private));
            }
            assert!(!may_see(private, OUTSIDER));
            assert_eq!(
                reachable(Some(private), OUTSIDER),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_no_server_then_it_is_not_found_by_anyone() {
            for membership in EVERYONE {
                assert_eq!(
                    reachable(None, membership),
                    Err(DomainError::ServerNotFound)
                );
            }
        }

        #[test]
        fn only_owners_and_subscribers_are_members() {
            assert!(Membership::Owner.is_member());
            assert!(Membership::Subscriber.is_member());
            assert!(!INVITED.is_member());
            assert!(!OUTSIDER.is_member());
        }
    }

    mod server_creation {
        use super::*;

        #[test]
        fn given_a_free_valid_name_when_creating_then_created_trimmed_with_normalized_tags() {
            let id = Uuid::now_v7();
            let tags = strings(&["Rust", "rust", "chat-apps", "RUST", "x_1"]);
            let events = decide_create_server(
                id,
                OWNER,
                "  Rustaceans ",
                &tags,
                Visibility::Private,
                false,
            );
            assert_eq!(
                events,
                Ok(vec![Event::ServerCreated {
                    server_id: id,
                    owner_id: OWNER,
                    name: "Rustaceans".into(),
                    tags: strings(&["rust", "chat-apps", "x_1"]),
                    visibility: Visibility::Private,
                }])
            );
        }

        #[test]
        fn given_a_taken_name_when_creating_then_server_name_taken_with_the_trimmed_name() {
            assert_eq!(
                decide_create_server(
                    Uuid::now_v7(),
                    OWNER,
                    "  Rustaceans ",
                    &[],
                    Visibility::Public,
                    true
                ),
                Err(DomainError::ServerNameTaken("Rustaceans".into()))
            );
        }

        #[test]
        fn given_an_invalid_name_when_creating_then_invalid_name_even_if_taken() {
            let too_long = "x".repeat(65);
            for bad in [
                "",
                "ab",
                "   ",
                "  ab  ",
                "tab\there",
                "new\nline",
                "zero\u{200B}width",
                "bidi\u{202E}override",
                too_long.as_str(),
            ] {
                for taken in [false, true] {
                    assert_eq!(
                        invalid_field(decide_create_server(
                            Uuid::now_v7(),
                            OWNER,
                            bad,
                            &[],
                            Visibility::Public,
                            taken
                        )),
                        "name",
                        "{bad:?}"
                    );
                }
            }
        }

        #[test]
        fn given_names_at_the_length_limits_when_creating_then_created() {
            let longest = "x".repeat(64);
            let longest_accented = "é".repeat(64);
            for good in ["abc", "été", longest.as_str(), longest_accented.as_str()] {
                let events = decide_create_server(
                    Uuid::now_v7(),
                    OWNER,
                    good,
                    &[],
                    Visibility::Public,
                    false,
                )
                .expect(good);
                assert!(
                    matches!(&events[..], [Event::ServerCreated { name, .. }] if name == good),
                    "{events:?}"
                );
            }
        }

        #[test]
        fn given_invalid_tags_when_creating_then_invalid_tags_naming_the_bad_tag() {
            for bad in ["no spaces", "", "dot.ted", "ünï", &"t".repeat(33)] {
                let result = decide_create_server(
                    Uuid::now_v7(),
                    OWNER,
                    "Fine name",
                    &strings(&["ok", bad]),
                    Visibility::Public,
                    false,
                );
                match result {
                    Err(DomainError::Invalid {
                        field: "tags",
                        rule,
                    }) => assert!(rule.contains(&format!("{bad:?}")), "{rule}"),
                    other => panic!("{bad:?}: expected invalid tags, got {other:?}"),
                }
            }
        }

        #[test]
        fn given_more_than_max_tags_when_creating_then_invalid_tags() {
            let too_many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
            assert_eq!(
                invalid_field(decide_create_server(
                    Uuid::now_v7(),
                    OWNER,
                    "Fine name",
                    &too_many,
                    Visibility::Public,
                    false
                )),
                "tags"
            );
        }

        #[test]
        fn given_max_distinct_tags_among_duplicates_when_creating_then_created_with_them() {
            let mut tags: Vec<String> = (0..MAX_TAGS).map(|i| format!("T{i}")).collect();
            tags.push("t0".into());
            tags[1] = "x".repeat(32);
            let events = decide_create_server(
                Uuid::now_v7(),
                OWNER,
                "Fine name",
                &tags,
                Visibility::Public,
                false,
            )
            .expect("created");
            let mut expected: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
            expected[1] = "x".repeat(32);
            assert!(
                matches!(&events[..], [Event::ServerCreated { tags, .. }] if *tags == expected),
                "{events:?}"
            );
        }
    }

    mod subscribing {
        use super::*;

        #[test]
        fn given_a_public_server_when_an_outsider_subscribes_then_subscribed() {
            let public = server(Visibility::Public);
            assert_eq!(
                decide_subscribe(Some(public), USER, OUTSIDER),
                Ok(vec![Event::ServerSubscribed {
                    server_id: public.server_id,
                    user_id: USER
                }])
            );
        }

        #[test]
        fn given_an_invitation_when_subscribing_then_it_is_accepted_and_the_user_subscribed() {
            for visibility in [Visibility::Private, Visibility::Public] {
                let s = server(visibility);
                assert_eq!(
                    decide_subscribe(Some(s), USER, INVITED),
                    Ok(vec![
                        Event::ServerSubscribed {
                            server_id: s.server_id,
                            user_id: USER
                        },
                        Event::ServerInvitationAnswered {
                            invitation_id: INVITATION,
                            server_id: s.server_id,
                            invitee_id: USER,
                            outcome: InvitationOutcome::Accepted,
                        },
                    ]),
                    "{visibility:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_and_no_invitation_when_subscribing_then_server_not_found() {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_subscribe(Some(private), USER, OUTSIDER),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_no_server_when_subscribing_then_server_not_found() {
            assert_eq!(
                decide_subscribe(None, USER, OUTSIDER),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_a_member_when_subscribing_then_nothing_changes() {
            for visibility in [Visibility::Public, Visibility::Private] {
                let s = server(visibility);
                assert_eq!(
                    decide_subscribe(Some(s), USER, Membership::Subscriber),
                    Ok(vec![])
                );
                assert_eq!(
                    decide_subscribe(Some(s), OWNER, Membership::Owner),
                    Ok(vec![])
                );
            }
        }
    }

    mod unsubscribing {
        use super::*;

        #[test]
        fn given_the_owner_when_unsubscribing_then_forbidden() {
            for visibility in [Visibility::Public, Visibility::Private] {
                let s = server(visibility);
                let here = channel_of(s.server_id);
                assert!(
                    forbidden(decide_unsubscribe(
                        Some(s),
                        OWNER,
                        Membership::Owner,
                        Some(here)
                    ))
                    .contains("owner")
                );
            }
        }

        #[test]
        fn given_a_subscriber_in_a_channel_of_the_server_when_unsubscribing_then_leaves_it_first() {
            let s = server(Visibility::Private);
            let here = channel_of(s.server_id);
            assert_eq!(
                decide_unsubscribe(Some(s), USER, Membership::Subscriber, Some(here)),
                Ok(vec![
                    Event::ChannelLeft {
                        user_id: USER,
                        server_id: s.server_id,
                        channel_id: here.channel_id,
                        reason: ChannelLeaveReason::Unsubscribed
                    },
                    Event::ServerUnsubscribed {
                        server_id: s.server_id,
                        user_id: USER
                    }
                ])
            );
        }

        #[test]
        fn given_a_subscriber_in_another_servers_channel_or_none_when_unsubscribing_then_only_unsubscribed()
         {
            let s = server(Visibility::Public);
            let elsewhere = channel_of(Uuid::now_v7());
            for current in [Some(elsewhere), None] {
                assert_eq!(
                    decide_unsubscribe(Some(s), USER, Membership::Subscriber, current),
                    Ok(vec![Event::ServerUnsubscribed {
                        server_id: s.server_id,
                        user_id: USER
                    }]),
                    "{current:?}"
                );
            }
        }

        #[test]
        fn given_an_outsider_who_may_see_the_server_when_unsubscribing_then_nothing_changes() {
            let public = server(Visibility::Public);
            let private = server(Visibility::Private);
            for (s, membership) in [(public, OUTSIDER), (public, INVITED), (private, INVITED)] {
                assert_eq!(
                    decide_unsubscribe(Some(s), USER, membership, None),
                    Ok(vec![]),
                    "{s:?} {membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_and_an_outsider_without_invitation_when_unsubscribing_then_server_not_found()
         {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_unsubscribe(Some(private), USER, OUTSIDER, None),
                Err(DomainError::ServerNotFound)
            );
            assert_eq!(
                decide_unsubscribe(None, USER, Membership::Subscriber, None),
                Err(DomainError::ServerNotFound)
            );
        }
    }

    mod inviting {
        use super::*;

        fn invite(
            server: ServerView,
            actor: Uuid,
            actor_membership: Membership,
            invitee_membership: Option<Membership>,
        ) -> Invite {
            Invite {
                server: Some(server),
                actor,
                actor_membership,
                invitee: OTHER,
                invitee_membership,
                invitation_id: NEW_INVITATION,
            }
        }

        fn sent(server: ServerView, inviter: Uuid) -> Vec<Event> {
            vec![
                Event::ServerInvitationSent {
                    invitation_id: NEW_INVITATION,
                    server_id: server.server_id,
                    inviter_id: inviter,
                    invitee_id: OTHER,
                },
                Event::NotificationRequested {
                    user_id: OTHER,
                    kind: NotificationKind::Invitation,
                    subject_id: server.server_id,
                    item_id: NEW_INVITATION,
                    from_id: inviter,
                },
            ]
        }

        #[test]
        fn given_a_public_server_when_a_member_invites_an_outsider_then_sent_and_notified() {
            let public = server(Visibility::Public);
            for (actor, membership) in [(USER, Membership::Subscriber), (OWNER, Membership::Owner)]
            {
                assert_eq!(
                    decide_invite(invite(public, actor, membership, Some(OUTSIDER))),
                    Ok(sent(public, actor)),
                    "{membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_when_the_owner_invites_an_outsider_then_sent_and_notified() {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_invite(invite(private, OWNER, Membership::Owner, Some(OUTSIDER))),
                Ok(sent(private, OWNER))
            );
        }

        #[test]
        fn given_a_private_server_when_a_subscriber_or_invitee_invites_then_forbidden() {
            let private = server(Visibility::Private);
            for membership in [Membership::Subscriber, INVITED] {
                assert!(
                    forbidden(decide_invite(invite(
                        private,
                        USER,
                        membership,
                        Some(OUTSIDER)
                    )))
                    .contains("private"),
                    "{membership:?}"
                );
            }
        }

        #[test]
        fn given_a_public_server_when_an_outsider_invites_then_forbidden() {
            let public = server(Visibility::Public);
            for membership in [OUTSIDER, INVITED] {
                assert!(
                    forbidden(decide_invite(invite(
                        public,
                        USER,
                        membership,
                        Some(OUTSIDER)
                    )))
                    .contains("subscribers"),
                    "{membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_when_an_outsider_without_invitation_invites_then_server_not_found()
         {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_invite(invite(private, USER, OUTSIDER, Some(OUTSIDER))),
                Err(DomainError::ServerNotFound)
            );
            assert_eq!(
                decide_invite(Invite {
                    server: None,
                    ..invite(private, OWNER, Membership::Owner, Some(OUTSIDER))
                }),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_an_unknown_invitee_when_inviting_then_user_not_found() {
            let public = server(Visibility::Public);
            assert_eq!(
                decide_invite(invite(public, OWNER, Membership::Owner, None)),
                Err(DomainError::UserNotFound(OTHER))
            );
        }

        #[test]
        fn given_oneself_as_invitee_when_inviting_then_invalid_user_id() {
            let public = server(Visibility::Public);
            assert_eq!(
                invalid_field(decide_invite(Invite {
                    invitee: USER,
                    ..invite(
                        public,
                        USER,
                        Membership::Subscriber,
                        Some(Membership::Subscriber)
                    )
                })),
                "user_id"
            );
        }

        #[test]
        fn given_a_member_as_invitee_when_inviting_then_already_subscribed() {
            let public = server(Visibility::Public);
            for invitee in [Membership::Subscriber, Membership::Owner] {
                assert_eq!(
                    decide_invite(invite(public, USER, Membership::Subscriber, Some(invitee))),
                    Err(DomainError::AlreadySubscribed(OTHER)),
                    "{invitee:?}"
                );
            }
        }

        #[test]
        fn given_a_pending_invitation_when_inviting_again_then_nothing_changes() {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_invite(invite(private, OWNER, Membership::Owner, Some(INVITED))),
                Ok(vec![])
            );
        }
    }

    mod answering {
        use super::*;

        fn invitation(server_id: Uuid, answer: Option<InvitationOutcome>) -> InvitationView {
            InvitationView {
                invitation_id: INVITATION,
                server_id,
                invitee_id: USER,
                answer,
            }
        }

        fn answered(server_id: Uuid, outcome: InvitationOutcome) -> Event {
            Event::ServerInvitationAnswered {
                invitation_id: INVITATION,
                server_id,
                invitee_id: USER,
                outcome,
            }
        }

        #[test]
        fn given_a_pending_invitation_when_the_invitee_accepts_then_answered_and_subscribed() {
            let server_id = Uuid::now_v7();
            assert_eq!(
                decide_answer_invitation(
                    Some(invitation(server_id, None)),
                    INVITATION,
                    USER,
                    INVITED,
                    true
                ),
                Ok(vec![
                    Event::ServerSubscribed {
                        server_id,
                        user_id: USER
                    },
                    answered(server_id, InvitationOutcome::Accepted),
                ])
            );
        }

        #[test]
        fn given_a_pending_invitation_when_the_invitee_declines_then_only_answered() {
            let server_id = Uuid::now_v7();
            assert_eq!(
                decide_answer_invitation(
                    Some(invitation(server_id, None)),
                    INVITATION,
                    USER,
                    INVITED,
                    false
                ),
                Ok(vec![answered(server_id, InvitationOutcome::Declined)])
            );
        }

        #[test]
        fn given_a_pending_invitation_when_a_member_accepts_then_only_answered() {
            let server_id = Uuid::now_v7();
            assert_eq!(
                decide_answer_invitation(
                    Some(invitation(server_id, None)),
                    INVITATION,
                    USER,
                    Membership::Subscriber,
                    true
                ),
                Ok(vec![answered(server_id, InvitationOutcome::Accepted)])
            );
        }

        #[test]
        fn given_someone_elses_or_no_invitation_when_answering_then_invitation_not_found() {
            let theirs = invitation(Uuid::now_v7(), None);
            for accept in [true, false] {
                assert_eq!(
                    decide_answer_invitation(Some(theirs), INVITATION, OTHER, OUTSIDER, accept),
                    Err(DomainError::InvitationNotFound(INVITATION))
                );
                assert_eq!(
                    decide_answer_invitation(None, INVITATION, USER, OUTSIDER, accept),
                    Err(DomainError::InvitationNotFound(INVITATION))
                );
            }
        }

        #[test]
        fn given_an_answered_invitation_when_the_same_answer_is_repeated_then_nothing_changes() {
            let server_id = Uuid::now_v7();
            let accepted = invitation(server_id, Some(InvitationOutcome::Accepted));
            let declined = invitation(server_id, Some(InvitationOutcome::Declined));
            // Membership no longer matters: the user may have unsubscribed since accepting.
            for membership in [Membership::Subscriber, OUTSIDER] {
                assert_eq!(
                    decide_answer_invitation(Some(accepted), INVITATION, USER, membership, true),
                    Ok(vec![])
                );
            }
            assert_eq!(
                decide_answer_invitation(Some(declined), INVITATION, USER, OUTSIDER, false),
                Ok(vec![])
            );
        }

        #[test]
        fn given_an_answered_invitation_when_the_answer_changes_then_conflict() {
            let server_id = Uuid::now_v7();
            let accepted = invitation(server_id, Some(InvitationOutcome::Accepted));
            let declined = invitation(server_id, Some(InvitationOutcome::Declined));
            assert!(
                conflict(decide_answer_invitation(
                    Some(accepted),
                    INVITATION,
                    USER,
                    Membership::Subscriber,
                    false
                ))
                .contains("accepted already")
            );
            assert!(
                conflict(decide_answer_invitation(
                    Some(declined),
                    INVITATION,
                    USER,
                    OUTSIDER,
                    true
                ))
                .contains("declined already")
            );
        }
    }

    mod posts {
        use super::*;

        fn publish<'a>(
            server: ServerView,
            actor: Uuid,
            membership: Membership,
            content: &'a str,
            tags: &'a [String],
        ) -> Publish<'a> {
            Publish {
                server: Some(server),
                actor,
                membership,
                post_id: POST,
                content,
                tags,
                max_chars: 100,
            }
        }

        #[test]
        fn given_the_owner_when_publishing_then_published_with_normalized_tags() {
            let private = server(Visibility::Private);
            let tags = strings(&["News", "news", "Release-1"]);
            assert_eq!(
                decide_publish_post(publish(
                    private,
                    OWNER,
                    Membership::Owner,
                    "hello\nworld",
                    &tags
                )),
                Ok(vec![Event::PostPublished {
                    post_id: POST,
                    server_id: private.server_id,
                    author_id: OWNER,
                    content: "hello\nworld".into(),
                    tags: strings(&["news", "release-1"]),
                }])
            );
        }

        #[test]
        fn given_anyone_but_the_owner_who_sees_the_server_when_publishing_then_forbidden() {
            let public = server(Visibility::Public);
            let private = server(Visibility::Private);
            for (s, membership) in [
                (public, Membership::Subscriber),
                (public, OUTSIDER),
                (public, INVITED),
                (private, Membership::Subscriber),
                (private, INVITED),
            ] {
                assert!(
                    forbidden(decide_publish_post(publish(
                        s,
                        USER,
                        membership,
                        "hello",
                        &[]
                    )))
                    .contains("owner"),
                    "{s:?} {membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_and_an_outsider_without_invitation_when_publishing_then_server_not_found()
         {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_publish_post(publish(private, USER, OUTSIDER, "hello", &[])),
                Err(DomainError::ServerNotFound)
            );
            assert_eq!(
                decide_publish_post(Publish {
                    server: None,
                    ..publish(private, OWNER, Membership::Owner, "hello", &[])
                }),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_blank_or_control_content_when_publishing_then_invalid_content() {
            let public = server(Visibility::Public);
            for bad in ["", "  \n\t ", "bell\u{7}"] {
                assert_eq!(
                    invalid_field(decide_publish_post(publish(
                        public,
                        OWNER,
                        Membership::Owner,
                        bad,
                        &[]
                    ))),
                    "content",
                    "{bad:?}"
                );
            }
        }

        #[test]
        fn given_content_over_the_maximum_when_publishing_then_too_long() {
            let public = server(Visibility::Public);
            let too_long = "x".repeat(101);
            assert_eq!(
                decide_publish_post(publish(public, OWNER, Membership::Owner, &too_long, &[])),
                Err(DomainError::TooLong { len: 101, max: 100 })
            );
            // The maximum counts characters, not bytes.
            let longest = "é".repeat(100);
            assert!(
                decide_publish_post(publish(public, OWNER, Membership::Owner, &longest, &[]))
                    .is_ok()
            );
        }

        #[test]
        fn given_invalid_tags_when_publishing_then_invalid_tags() {
            let public = server(Visibility::Public);
            let too_many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
            for tags in [strings(&["no spaces"]), strings(&[""]), too_many] {
                assert_eq!(
                    invalid_field(decide_publish_post(publish(
                        public,
                        OWNER,
                        Membership::Owner,
                        "hello",
                        &tags
                    ))),
                    "tags",
                    "{tags:?}"
                );
            }
        }

        #[test]
        fn given_a_public_server_then_everyone_reads_its_posts() {
            let public = server(Visibility::Public);
            for membership in EVERYONE {
                assert!(may_read_posts(public, membership), "{membership:?}");
            }
        }

        #[test]
        fn given_a_private_server_then_only_members_read_its_posts_not_invitees() {
            let private = server(Visibility::Private);
            assert!(may_read_posts(private, Membership::Owner));
            assert!(may_read_posts(private, Membership::Subscriber));
            assert!(!may_read_posts(private, INVITED));
            assert!(!may_read_posts(private, OUTSIDER));
        }
    }

    mod channels {
        use super::*;

        fn create<'a>(
            server: ServerView,
            actor: Uuid,
            membership: Membership,
            name: &'a str,
            existing: &'a [&'a str],
        ) -> CreateChannel<'a> {
            CreateChannel {
                server: Some(server),
                actor,
                membership,
                channel_id: Uuid::from_u128(40),
                name,
                existing,
            }
        }

        #[test]
        fn given_the_owner_and_a_free_valid_name_when_creating_then_created() {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_create_channel(create(
                    private,
                    OWNER,
                    Membership::Owner,
                    "general",
                    &["random", "dev"]
                )),
                Ok(vec![Event::ChannelCreated {
                    channel_id: Uuid::from_u128(40),
                    server_id: private.server_id,
                    name: "general".into(),
                    created_by: OWNER,
                }])
            );
        }

        #[test]
        fn given_valid_names_at_the_limits_when_creating_then_created() {
            let public = server(Visibility::Public);
            let longest = "a".repeat(32);
            for good in ["a", "0day", "dev_ops-2", longest.as_str()] {
                assert!(
                    decide_create_channel(create(public, OWNER, Membership::Owner, good, &[]))
                        .is_ok(),
                    "{good:?}"
                );
            }
        }

        #[test]
        fn given_an_invalid_name_when_creating_then_invalid_name() {
            let public = server(Visibility::Public);
            let too_long = "a".repeat(33);
            for bad in [
                "",
                "General",
                "with space",
                "-dash",
                "_under",
                "dot.ted",
                "café",
                too_long.as_str(),
            ] {
                assert_eq!(
                    invalid_field(decide_create_channel(create(
                        public,
                        OWNER,
                        Membership::Owner,
                        bad,
                        &[]
                    ))),
                    "name",
                    "{bad:?}"
                );
            }
        }

        #[test]
        fn given_anyone_but_the_owner_who_sees_the_server_when_creating_then_forbidden() {
            let public = server(Visibility::Public);
            let private = server(Visibility::Private);
            for (s, membership) in [
                (public, Membership::Subscriber),
                (public, OUTSIDER),
                (private, Membership::Subscriber),
                (private, INVITED),
            ] {
                assert!(
                    forbidden(decide_create_channel(create(
                        s,
                        USER,
                        membership,
                        "general",
                        &[]
                    )))
                    .contains("owner"),
                    "{s:?} {membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_and_an_outsider_without_invitation_when_creating_then_server_not_found()
         {
            let private = server(Visibility::Private);
            assert_eq!(
                decide_create_channel(create(private, USER, OUTSIDER, "general", &[])),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_a_name_in_use_when_creating_then_channel_name_taken() {
            let public = server(Visibility::Public);
            assert_eq!(
                decide_create_channel(create(
                    public,
                    OWNER,
                    Membership::Owner,
                    "general",
                    &["random", "general"]
                )),
                Err(DomainError::ChannelNameTaken("general".into()))
            );
        }

        #[test]
        fn given_max_channels_when_creating_then_conflict_and_one_fewer_is_fine() {
            let public = server(Visibility::Public);
            let names: Vec<String> = (0..MAX_CHANNELS).map(|i| format!("c{i}")).collect();
            let existing: Vec<&str> = names.iter().map(String::as_str).collect();
            assert!(
                conflict(decide_create_channel(create(
                    public,
                    OWNER,
                    Membership::Owner,
                    "general",
                    &existing
                )))
                .contains(&MAX_CHANNELS.to_string())
            );
            assert!(
                decide_create_channel(create(
                    public,
                    OWNER,
                    Membership::Owner,
                    "general",
                    &existing[1..]
                ))
                .is_ok()
            );
        }

        #[test]
        fn given_the_owner_and_a_channel_of_the_server_when_deleting_then_deleted() {
            let private = server(Visibility::Private);
            let here = channel_of(private.server_id);
            assert_eq!(
                decide_delete_channel(
                    Some(private),
                    OWNER,
                    Membership::Owner,
                    here.channel_id,
                    Some(here)
                ),
                Ok(vec![Event::ChannelDeleted {
                    channel_id: here.channel_id,
                    server_id: private.server_id,
                    deleted_by: OWNER,
                }])
            );
        }

        #[test]
        fn given_a_channel_of_another_server_or_none_when_deleting_then_channel_not_found() {
            let public = server(Visibility::Public);
            let elsewhere = channel_of(Uuid::now_v7());
            for channel in [Some(elsewhere), None] {
                assert_eq!(
                    decide_delete_channel(
                        Some(public),
                        OWNER,
                        Membership::Owner,
                        elsewhere.channel_id,
                        channel
                    ),
                    Err(DomainError::ChannelNotFound(elsewhere.channel_id)),
                    "{channel:?}"
                );
            }
        }

        #[test]
        fn given_a_channel_of_another_id_when_deleting_then_channel_not_found() {
            let public = server(Visibility::Public);
            let here = channel_of(public.server_id);
            let named = Uuid::now_v7();
            assert_eq!(
                decide_delete_channel(Some(public), OWNER, Membership::Owner, named, Some(here)),
                Err(DomainError::ChannelNotFound(named))
            );
        }

        #[test]
        fn given_anyone_but_the_owner_when_deleting_then_forbidden() {
            let public = server(Visibility::Public);
            let here = channel_of(public.server_id);
            for membership in [Membership::Subscriber, OUTSIDER] {
                assert!(
                    forbidden(decide_delete_channel(
                        Some(public),
                        USER,
                        membership,
                        here.channel_id,
                        Some(here)
                    ))
                    .contains("owner")
                );
            }
        }

        #[test]
        fn given_a_private_server_and_an_outsider_without_invitation_when_deleting_then_server_not_found()
         {
            let private = server(Visibility::Private);
            let here = channel_of(private.server_id);
            assert_eq!(
                decide_delete_channel(Some(private), USER, OUTSIDER, here.channel_id, Some(here)),
                Err(DomainError::ServerNotFound)
            );
        }
    }

    mod joining_and_leaving {
        use super::*;

        fn join(
            server: ServerView,
            channel: ChannelRef,
            membership: Membership,
            current: Option<ChannelRef>,
        ) -> Join {
            Join {
                server: Some(server),
                channel_id: channel.channel_id,
                target: Some(channel),
                actor: USER,
                membership,
                current,
                mark_read_up_to: None,
            }
        }

        fn joined(channel: ChannelRef) -> Event {
            Event::ChannelJoined {
                user_id: USER,
                server_id: channel.server_id,
                channel_id: channel.channel_id,
            }
        }

        fn left(channel: ChannelRef, reason: ChannelLeaveReason) -> Event {
            Event::ChannelLeft {
                user_id: USER,
                server_id: channel.server_id,
                channel_id: channel.channel_id,
                reason,
            }
        }

        #[test]
        fn given_no_channel_when_a_member_joins_then_joined() {
            let s = server(Visibility::Private);
            let here = channel_of(s.server_id);
            for membership in [Membership::Owner, Membership::Subscriber] {
                assert_eq!(
                    decide_join_channel(join(s, here, membership, None)),
                    Ok(vec![joined(here)]),
                    "{membership:?}"
                );
            }
        }

        #[test]
        fn given_a_channel_of_any_server_when_joining_another_then_left_switched_then_joined() {
            let s = server(Visibility::Public);
            let here = channel_of(s.server_id);
            let same_server = channel_of(s.server_id);
            let other_server = channel_of(Uuid::now_v7());
            for previous in [same_server, other_server] {
                assert_eq!(
                    decide_join_channel(join(s, here, Membership::Subscriber, Some(previous))),
                    Ok(vec![
                        left(previous, ChannelLeaveReason::Switched),
                        joined(here)
                    ])
                );
            }
        }

        #[test]
        fn given_a_latest_message_when_joining_then_the_read_marker_follows_the_join() {
            let s = server(Visibility::Public);
            let here = channel_of(s.server_id);
            let previous = channel_of(Uuid::now_v7());
            let read = Event::ChannelMessagesRead {
                server_id: s.server_id,
                channel_id: here.channel_id,
                reader_id: USER,
                up_to: LATEST,
            };
            assert_eq!(
                decide_join_channel(Join {
                    mark_read_up_to: Some(LATEST),
                    ..join(s, here, Membership::Subscriber, None)
                }),
                Ok(vec![joined(here), read.clone()])
            );
            assert_eq!(
                decide_join_channel(Join {
                    mark_read_up_to: Some(LATEST),
                    ..join(s, here, Membership::Subscriber, Some(previous))
                }),
                Ok(vec![
                    left(previous, ChannelLeaveReason::Switched),
                    joined(here),
                    read
                ])
            );
        }

        #[test]
        fn given_the_current_channel_when_joining_it_then_nothing_changes() {
            let s = server(Visibility::Public);
            let here = channel_of(s.server_id);
            for mark_read_up_to in [None, Some(LATEST)] {
                assert_eq!(
                    decide_join_channel(Join {
                        mark_read_up_to,
                        ..join(s, here, Membership::Subscriber, Some(here))
                    }),
                    Ok(vec![])
                );
            }
        }

        #[test]
        fn given_an_outsider_who_sees_the_server_when_joining_then_forbidden() {
            let public = server(Visibility::Public);
            let private = server(Visibility::Private);
            for (s, membership) in [(public, OUTSIDER), (public, INVITED), (private, INVITED)] {
                let here = channel_of(s.server_id);
                assert!(
                    forbidden(decide_join_channel(join(s, here, membership, None)))
                        .contains("subscribe"),
                    "{s:?} {membership:?}"
                );
            }
        }

        #[test]
        fn given_a_private_server_and_an_outsider_without_invitation_when_joining_then_server_not_found()
         {
            let private = server(Visibility::Private);
            let here = channel_of(private.server_id);
            assert_eq!(
                decide_join_channel(join(private, here, OUTSIDER, None)),
                Err(DomainError::ServerNotFound)
            );
            // Whether the channel exists is not told either.
            assert_eq!(
                decide_join_channel(Join {
                    target: None,
                    ..join(private, here, OUTSIDER, None)
                }),
                Err(DomainError::ServerNotFound)
            );
            assert_eq!(
                decide_join_channel(Join {
                    server: None,
                    ..join(private, here, Membership::Subscriber, None)
                }),
                Err(DomainError::ServerNotFound)
            );
        }

        #[test]
        fn given_a_channel_not_of_the_named_server_or_id_when_joining_then_channel_not_found() {
            let s = server(Visibility::Public);
            let here = channel_of(s.server_id);
            let elsewhere = channel_of(Uuid::now_v7());
            let wrong_id = Uuid::now_v7();
            for (channel_id, target) in [
                (elsewhere.channel_id, Some(elsewhere)),
                (wrong_id, Some(here)),
                (here.channel_id, None),
            ] {
                assert_eq!(
                    decide_join_channel(Join {
                        channel_id,
                        target,
                        ..join(s, here, Membership::Subscriber, None)
                    }),
                    Err(DomainError::ChannelNotFound(channel_id)),
                    "{target:?}"
                );
            }
        }

        #[test]
        fn given_the_current_channel_when_leaving_it_then_left() {
            let here = channel_of(Uuid::now_v7());
            assert_eq!(
                decide_leave_channel(
                    here.server_id,
                    here.channel_id,
                    Some(here),
                    USER,
                    Some(here)
                ),
                Ok(vec![left(here, ChannelLeaveReason::Left)])
            );
        }

        #[test]
        fn given_another_or_no_current_channel_when_leaving_then_nothing_changes() {
            let here = channel_of(Uuid::now_v7());
            let same_server = channel_of(here.server_id);
            for current in [Some(same_server), Some(channel_of(Uuid::now_v7())), None] {
                assert_eq!(
                    decide_leave_channel(
                        here.server_id,
                        here.channel_id,
                        Some(here),
                        USER,
                        current
                    ),
                    Ok(vec![]),
                    "{current:?}"
                );
            }
        }

        #[test]
        fn given_a_channel_not_of_the_named_server_or_id_when_leaving_then_channel_not_found() {
            let here = channel_of(Uuid::now_v7());
            let wrong = Uuid::now_v7();
            for (server_id, channel_id, target) in [
                (wrong, here.channel_id, Some(here)),
                (here.server_id, wrong, Some(here)),
                (here.server_id, here.channel_id, None),
            ] {
                assert_eq!(
                    decide_leave_channel(server_id, channel_id, target, USER, Some(here)),
                    Err(DomainError::ChannelNotFound(channel_id))
                );
            }
        }
    }

    mod channel_messages {
        use super::*;

        fn send(here: ChannelRef) -> ChannelSend<'static> {
            ChannelSend {
                server_id: here.server_id,
                channel_id: here.channel_id,
                target: Some(here),
                actor: USER,
                membership: Membership::Subscriber,
                current: Some(here),
                message_id: MESSAGE,
                text: "hi",
                client_msg_id: Some("c1"),
                max_chars: 10,
            }
        }

        #[test]
        fn given_a_member_in_the_channel_when_sending_then_sent() {
            let here = channel_of(Uuid::now_v7());
            for (membership, client_msg_id) in [
                (Membership::Subscriber, Some("c1")),
                (Membership::Owner, None),
            ] {
                assert_eq!(
                    decide_send_channel_message(ChannelSend {
                        membership,
                        client_msg_id,
                        ..send(here)
                    }),
                    Ok(vec![Event::ChannelMessageSent {
                        message_id: MESSAGE,
                        server_id: here.server_id,
                        channel_id: here.channel_id,
                        sender_id: USER,
                        text: "hi".into(),
                        client_msg_id: client_msg_id.map(str::to_owned),
                    }])
                );
            }
        }

        #[test]
        fn given_a_subscriber_not_in_the_channel_when_sending_then_forbidden() {
            let here = channel_of(Uuid::now_v7());
            let next_door = channel_of(here.server_id);
            for current in [None, Some(next_door)] {
                assert!(
                    forbidden(decide_send_channel_message(ChannelSend {
                        current,
                        ..send(here)
                    }))
                    .contains("join"),
                    "{current:?}"
                );
            }
        }

        #[test]
        fn given_a_user_still_in_the_channel_after_unsubscribing_when_sending_then_forbidden() {
            let here = channel_of(Uuid::now_v7());
            for membership in [OUTSIDER, INVITED] {
                assert!(
                    forbidden(decide_send_channel_message(ChannelSend {
                        membership,
                        ..send(here)
                    }))
                    .contains("only its members"),
                    "{membership:?}"
                );
            }
        }

        #[test]
        fn given_invalid_text_when_sending_then_invalid_text_or_too_long() {
            let here = channel_of(Uuid::now_v7());
            for text in ["", "   ", "bell\u{7}"] {
                assert_eq!(
                    invalid_field(decide_send_channel_message(ChannelSend {
                        text,
                        ..send(here)
                    })),
                    "text",
                    "{text:?}"
                );
            }
            assert_eq!(
                decide_send_channel_message(ChannelSend {
                    text: "eleven char",
                    ..send(here)
                }),
                Err(DomainError::TooLong { len: 11, max: 10 })
            );
        }

        #[test]
        fn given_an_invalid_client_msg_id_when_sending_then_invalid_client_msg_id() {
            let here = channel_of(Uuid::now_v7());
            let too_long = "c".repeat(65);
            for id in ["", "has space", "é", too_long.as_str()] {
                assert_eq!(
                    invalid_field(decide_send_channel_message(ChannelSend {
                        client_msg_id: Some(id),
                        ..send(here)
                    })),
                    "client_msg_id",
                    "{id:?}"
                );
            }
        }

        #[test]
        fn given_a_channel_not_of_the_named_server_or_id_when_sending_then_channel_not_found() {
            let here = channel_of(Uuid::now_v7());
            let wrong = Uuid::now_v7();
            for cmd in [
                ChannelSend {
                    server_id: wrong,
                    ..send(here)
                },
                ChannelSend {
                    channel_id: wrong,
                    ..send(here)
                },
                ChannelSend {
                    target: None,
                    ..send(here)
                },
            ] {
                assert_eq!(
                    decide_send_channel_message(cmd),
                    Err(DomainError::ChannelNotFound(cmd.channel_id))
                );
            }
        }
    }
}
