//! Friend requests, acceptance and removal between two users.

use missive_events::RemovalReason;
use uuid::Uuid;

use crate::{DomainError, Event, FriendshipState, Result};

/// What `actor` wants to do about `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendCommand {
    /// Ask to be friends; accepts at once if `other` had already asked.
    Request,
    /// Accept `other`'s pending request.
    Accept,
    /// Unfriend, decline `other`'s request, or cancel my own.
    Remove,
}

/// Decides a friendship command given the pair's current state and whether `other` exists.
pub fn decide(
    state: FriendshipState,
    actor: Uuid,
    other: Uuid,
    other_exists: bool,
    command: FriendCommand,
) -> Result<Vec<Event>> {
    if actor == other {
        return Err(DomainError::Invalid {
            field: "user_id",
            rule: "must be another user: you cannot befriend yourself".into(),
        });
    }
    if !other_exists {
        return Err(DomainError::UserNotFound(other));
    }
    use FriendCommand::*;
    use FriendshipState as S;
    let accept = || Event::FriendRequestAccepted {
        requester_id: other,
        addressee_id: actor,
    };
    let remove = |reason| Event::FriendshipRemoved {
        removed_by: actor,
        other_id: other,
        reason,
    };
    Ok(match (command, state) {
        (Request, S::None) => vec![Event::FriendRequested {
            requester_id: actor,
            addressee_id: other,
        }],
        (Request, S::Pending { requester }) if requester == other => vec![accept()],
        (Request | Accept, S::Friends) => Vec::new(),
        (Request, S::Pending { .. }) => Vec::new(),
        (Accept, S::Pending { requester }) if requester == other => vec![accept()],
        (Accept, S::Pending { .. }) => {
            return Err(DomainError::Conflict(format!(
                "you sent this friend request; only user {other} can accept it"
            )));
        }
        (Accept, S::None) => {
            return Err(DomainError::NotFound(format!(
                "no pending friend request from user {other}"
            )));
        }
        (Remove, S::Friends) => vec![remove(RemovalReason::Unfriended)],
        (Remove, S::Pending { requester }) if requester == actor => {
            vec![remove(RemovalReason::Cancelled)]
        }
        (Remove, S::Pending { .. }) => vec![remove(RemovalReason::Declined)],
        (Remove, S::None) => {
            return Err(DomainError::NotFound(format!(
                "you are not friends with user {other} and there is no pending request"
            )));
        }
    })
}

/// The state a friendship event leaves the pair in.
pub fn evolve(event: &Event) -> Option<FriendshipState> {
    match event {
        Event::FriendRequested { requester_id, .. } => Some(FriendshipState::Pending {
            requester: *requester_id,
        }),
        Event::FriendRequestAccepted { .. } => Some(FriendshipState::Friends),
        Event::FriendshipRemoved { .. } => Some(FriendshipState::None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7())
    }

    #[test]
    fn given_strangers_when_requesting_then_pending() {
        let (a, b) = ids();
        let events = decide(FriendshipState::None, a, b, true, FriendCommand::Request).unwrap();
        assert_eq!(
            events,
            vec![Event::FriendRequested {
                requester_id: a,
                addressee_id: b
            }]
        );
        assert_eq!(
            evolve(&events[0]),
            Some(FriendshipState::Pending { requester: a })
        );
    }

    #[test]
    fn given_their_request_when_i_request_then_accepted_at_once() {
        let (a, b) = ids();
        let state = FriendshipState::Pending { requester: b };
        let events = decide(state, a, b, true, FriendCommand::Request).unwrap();
        assert_eq!(
            events,
            vec![Event::FriendRequestAccepted {
                requester_id: b,
                addressee_id: a
            }]
        );
    }

    #[test]
    fn retries_are_no_ops() {
        let (a, b) = ids();
        let mine = FriendshipState::Pending { requester: a };
        assert!(
            decide(mine, a, b, true, FriendCommand::Request)
                .unwrap()
                .is_empty()
        );
        assert!(
            decide(FriendshipState::Friends, a, b, true, FriendCommand::Request)
                .unwrap()
                .is_empty()
        );
        assert!(
            decide(FriendshipState::Friends, a, b, true, FriendCommand::Accept)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn only_the_addressee_accepts() {
        let (a, b) = ids();
        let mine = FriendshipState::Pending { requester: a };
        assert!(matches!(
            decide(mine, a, b, true, FriendCommand::Accept),
            Err(DomainError::Conflict(_))
        ));
        assert!(matches!(
            decide(FriendshipState::None, a, b, true, FriendCommand::Accept),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn removal_reason_follows_the_state() {
        let (a, b) = ids();
        let reason = |state| match decide(state, a, b, true, FriendCommand::Remove).unwrap()[..] {
            [Event::FriendshipRemoved { reason, .. }] => reason,
            ref other => panic!("unexpected {other:?}"),
        };
        assert_eq!(reason(FriendshipState::Friends), RemovalReason::Unfriended);
        assert_eq!(
            reason(FriendshipState::Pending { requester: a }),
            RemovalReason::Cancelled
        );
        assert_eq!(
            reason(FriendshipState::Pending { requester: b }),
            RemovalReason::Declined
        );
        assert!(matches!(
            decide(FriendshipState::None, a, b, true, FriendCommand::Remove),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn self_and_unknown_users_are_refused() {
        let (a, b) = ids();
        assert!(matches!(
            decide(FriendshipState::None, a, a, true, FriendCommand::Request),
            Err(DomainError::Invalid { .. })
        ));
        assert_eq!(
            decide(FriendshipState::None, a, b, false, FriendCommand::Request),
            Err(DomainError::UserNotFound(b))
        );
    }
}
