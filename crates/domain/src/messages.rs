//! Direct messages: sending, read markers and deletion.

use missive_events::{DeleteScope, ids::direct_conversation_id};
use uuid::Uuid;

use crate::{DomainError, Event, FriendshipState, Result};

/// The default maximum message length, in characters (Unicode scalar values).
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4096;
/// Idempotency keys: 1 to 64 printable ASCII characters without spaces.
pub const CLIENT_MSG_ID_RULE: &str = "1 to 64 printable ASCII characters without spaces";

/// A request to send a direct message.
#[derive(Debug, Clone, Copy)]
pub struct Send<'a> {
    /// Chosen by the caller (UUIDv7) so that the decision stays pure.
    pub message_id: Uuid,
    pub sender: Uuid,
    pub recipient: Uuid,
    pub text: &'a str,
    pub client_msg_id: Option<&'a str>,
}

/// What a send decision needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SendState {
    pub recipient_exists: bool,
    pub friendship: FriendshipState,
    pub max_text_chars: usize,
}

pub fn validate_client_msg_id(id: &str) -> Result<()> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field: "client_msg_id",
            rule: format!("must be {CLIENT_MSG_ID_RULE}"),
        })
    }
}

/// Checks the text alone: not blank, not longer than `max` characters.
pub fn validate_text(text: &str, max: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(DomainError::Invalid {
            field: "text",
            rule: "must not be empty or only white space".into(),
        });
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(DomainError::Invalid {
            field: "text",
            rule: "must not contain control characters other than newline, carriage return and tab"
                .into(),
        });
    }
    let len = text.chars().count();
    if len > max {
        return Err(DomainError::TooLong { len, max });
    }
    Ok(())
}

pub fn decide_send(state: SendState, cmd: Send<'_>) -> Result<Vec<Event>> {
    validate_text(cmd.text, state.max_text_chars)?;
    if let Some(id) = cmd.client_msg_id {
        validate_client_msg_id(id)?;
    }
    if cmd.sender == cmd.recipient {
        return Err(DomainError::Invalid {
            field: "peer_id",
            rule: "must be another user: you cannot message yourself".into(),
        });
    }
    if !state.recipient_exists {
        return Err(DomainError::UserNotFound(cmd.recipient));
    }
    if state.friendship != FriendshipState::Friends {
        return Err(DomainError::Forbidden(
            "you can only message your friends: send a friend request and wait until it is accepted",
        ));
    }
    Ok(vec![Event::MessageSent {
        message_id: cmd.message_id,
        conversation_id: direct_conversation_id(cmd.sender, cmd.recipient),
        sender_id: cmd.sender,
        recipient_id: cmd.recipient,
        text: cmd.text.to_owned(),
        client_msg_id: cmd.client_msg_id.map(str::to_owned),
    }])
}

/// What deletion and read decisions need to know about a message the actor can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub sender_id: Uuid,
    pub deleted_for_everyone: bool,
}

/// Marks everything up to `up_to` read. `message` is `up_to` as the reader sees it, `None` if
/// they cannot see it.
pub fn decide_mark_read(
    reader: Uuid,
    conversation_id: Uuid,
    up_to: Uuid,
    message: Option<Visible>,
) -> Result<Vec<Event>> {
    match message {
        Some(m) if m.conversation_id == conversation_id => Ok(vec![Event::MessagesRead {
            conversation_id,
            reader_id: reader,
            up_to: m.message_id,
        }]),
        _ => Err(DomainError::NotFound(format!(
            "no message {up_to} that you can see in conversation {conversation_id}"
        ))),
    }
}

/// Deletes a message for the actor, or (sender only) for everyone.
pub fn decide_delete(
    actor: Uuid,
    message_id: Uuid,
    message: Option<Visible>,
    scope: DeleteScope,
) -> Result<Vec<Event>> {
    let m = message.ok_or(DomainError::MessageNotFound(message_id))?;
    if scope == DeleteScope::ForEveryone {
        if m.sender_id != actor {
            return Err(DomainError::Forbidden(
                "only the sender can delete a message for everyone; use scope=me to hide it for yourself",
            ));
        }
        if m.deleted_for_everyone {
            return Ok(Vec::new());
        }
    }
    Ok(vec![Event::MessageDeleted {
        message_id,
        conversation_id: m.conversation_id,
        deleted_by: actor,
        scope,
    }])
}

/// What an acknowledgement needs to know about a message the actor can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliverable {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub sender_id: Uuid,
    pub recipient_id: Uuid,
    /// A device of the recipient acknowledged it already, or their read marker passed it.
    pub delivered: bool,
    pub deleted_for_everyone: bool,
}

/// A device of the recipient acknowledges a message: it is delivered, once. Acknowledging it
/// again, after it was read, or once it was deleted for everyone changes nothing. `message` is
/// the message as the actor sees it, `None` if they cannot see it.
pub fn decide_acknowledge(
    actor: Uuid,
    message_id: Uuid,
    message: Option<Deliverable>,
) -> Result<Vec<Event>> {
    let m = message.ok_or(DomainError::MessageNotFound(message_id))?;
    if m.recipient_id != actor {
        return Err(DomainError::Forbidden(
            "only the recipient of a message acknowledges its delivery",
        ));
    }
    if m.delivered || m.deleted_for_everyone {
        return Ok(Vec::new());
    }
    Ok(vec![Event::MessageDelivered {
        message_id: m.message_id,
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
        recipient_id: m.recipient_id,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliverable() -> Deliverable {
        Deliverable {
            message_id: Uuid::from_u128(30),
            conversation_id: Uuid::from_u128(31),
            sender_id: Uuid::from_u128(1),
            recipient_id: Uuid::from_u128(2),
            delivered: false,
            deleted_for_everyone: false,
        }
    }

    #[test]
    fn given_a_pending_message_when_its_recipient_acknowledges_then_it_is_delivered() {
        let m = deliverable();
        assert_eq!(
            decide_acknowledge(m.recipient_id, m.message_id, Some(m)).unwrap(),
            vec![Event::MessageDelivered {
                message_id: m.message_id,
                conversation_id: m.conversation_id,
                sender_id: m.sender_id,
                recipient_id: m.recipient_id,
            }]
        );
    }

    #[test]
    fn given_a_delivered_read_or_deleted_message_when_acknowledged_again_then_nothing_changes() {
        for m in [
            Deliverable {
                delivered: true,
                ..deliverable()
            },
            Deliverable {
                deleted_for_everyone: true,
                ..deliverable()
            },
        ] {
            assert_eq!(
                decide_acknowledge(m.recipient_id, m.message_id, Some(m)).unwrap(),
                vec![]
            );
        }
    }

    #[test]
    fn given_someone_else_or_an_unseen_message_when_acknowledging_then_refused() {
        let m = deliverable();
        assert!(matches!(
            decide_acknowledge(m.sender_id, m.message_id, Some(m)),
            Err(DomainError::Forbidden(_))
        ));
        assert_eq!(
            decide_acknowledge(m.recipient_id, m.message_id, None),
            Err(DomainError::MessageNotFound(m.message_id))
        );
    }

    fn friends() -> SendState {
        SendState {
            recipient_exists: true,
            friendship: FriendshipState::Friends,
            max_text_chars: 10,
        }
    }

    fn send(text: &str) -> Send<'_> {
        Send {
            message_id: Uuid::now_v7(),
            sender: Uuid::from_u128(1),
            recipient: Uuid::from_u128(2),
            text,
            client_msg_id: Some("abc-1"),
        }
    }

    #[test]
    fn given_friends_when_sending_then_message_sent_in_their_conversation() {
        let cmd = send("hello");
        let events = decide_send(friends(), cmd).unwrap();
        match &events[..] {
            [
                Event::MessageSent {
                    conversation_id,
                    text,
                    client_msg_id,
                    ..
                },
            ] => {
                assert_eq!(
                    *conversation_id,
                    direct_conversation_id(cmd.recipient, cmd.sender)
                );
                assert_eq!(text, "hello");
                assert_eq!(client_msg_id.as_deref(), Some("abc-1"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn text_rules() {
        assert!(matches!(
            decide_send(friends(), send(" \n ")),
            Err(DomainError::Invalid { field: "text", .. })
        ));
        assert_eq!(
            decide_send(friends(), send("ééééééééééé")),
            Err(DomainError::TooLong { len: 11, max: 10 })
        );
        assert!(
            decide_send(friends(), send("éééééééééé")).is_ok(),
            "characters, not bytes"
        );
        assert!(decide_send(friends(), send("a\nb\tc\r")).is_ok());
        for bad in ["a\u{0}b", "\u{1b}[31m", "x\u{7f}"] {
            assert!(
                matches!(
                    decide_send(friends(), send(bad)),
                    Err(DomainError::Invalid { field: "text", .. })
                ),
                "{bad:?}"
            );
        }
        let mut bad_id = send("hi");
        bad_id.client_msg_id = Some("has space");
        assert!(matches!(
            decide_send(friends(), bad_id),
            Err(DomainError::Invalid {
                field: "client_msg_id",
                ..
            })
        ));
    }

    #[test]
    fn given_strangers_or_pending_when_sending_then_forbidden() {
        for friendship in [
            FriendshipState::None,
            FriendshipState::Pending {
                requester: Uuid::from_u128(1),
            },
        ] {
            let state = SendState {
                friendship,
                ..friends()
            };
            assert!(matches!(
                decide_send(state, send("hi")),
                Err(DomainError::Forbidden(_))
            ));
        }
        let state = SendState {
            recipient_exists: false,
            ..friends()
        };
        assert!(matches!(
            decide_send(state, send("hi")),
            Err(DomainError::UserNotFound(_))
        ));
        let mut to_self = send("hi");
        to_self.recipient = to_self.sender;
        assert!(matches!(
            decide_send(friends(), to_self),
            Err(DomainError::Invalid { .. })
        ));
    }

    fn visible(sender: u128) -> Visible {
        Visible {
            message_id: Uuid::from_u128(9),
            conversation_id: Uuid::from_u128(7),
            sender_id: Uuid::from_u128(sender),
            deleted_for_everyone: false,
        }
    }

    #[test]
    fn only_the_sender_deletes_for_everyone() {
        let me = Uuid::from_u128(1);
        let id = Uuid::from_u128(9);
        assert!(matches!(
            decide_delete(me, id, Some(visible(2)), DeleteScope::ForEveryone),
            Err(DomainError::Forbidden(_))
        ));
        assert_eq!(
            decide_delete(me, id, Some(visible(2)), DeleteScope::ForMe)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            decide_delete(me, id, Some(visible(1)), DeleteScope::ForEveryone)
                .unwrap()
                .len(),
            1
        );
        let gone = Visible {
            deleted_for_everyone: true,
            ..visible(1)
        };
        assert!(
            decide_delete(me, id, Some(gone), DeleteScope::ForEveryone)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            decide_delete(me, id, None, DeleteScope::ForMe),
            Err(DomainError::MessageNotFound(id))
        );
    }

    #[test]
    fn read_markers_need_a_visible_message_of_that_conversation() {
        let me = Uuid::from_u128(1);
        let conv = Uuid::from_u128(7);
        assert_eq!(
            decide_mark_read(me, conv, Uuid::from_u128(9), Some(visible(2)))
                .unwrap()
                .len(),
            1
        );
        assert!(
            decide_mark_read(me, Uuid::from_u128(8), Uuid::from_u128(9), Some(visible(2))).is_err()
        );
        assert!(decide_mark_read(me, conv, Uuid::from_u128(9), None).is_err());
    }
}
