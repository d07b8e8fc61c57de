//! Registration and profiles.

use uuid::Uuid;

use missive_events::AccountStatus;

use crate::{DomainError, Event, Result, is_unprintable};

/// Usernames: 3 to 32 characters; ASCII letters, digits, `_`, `.` and `-`; starting with a
/// letter or digit. Unique regardless of case.
pub const USERNAME_RULE: &str = "3 to 32 characters: ASCII letters, digits, '_', '.' or '-', \
starting with a letter or digit";
/// Display names: 1 to 64 characters, no control characters, not only spaces.
pub const DISPLAY_NAME_RULE: &str = "1 to 64 characters, without control characters, not blank";

pub fn validate_username(username: &str) -> Result<()> {
    let ok = (3..=32).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && username.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field: "username",
            rule: format!("must be {USERNAME_RULE}"),
        })
    }
}

pub fn validate_display_name(name: &str) -> Result<()> {
    let len = name.chars().count();
    if (1..=64).contains(&len) && !name.trim().is_empty() && !name.chars().any(is_unprintable) {
        Ok(())
    } else {
        Err(DomainError::Invalid {
            field: "display_name",
            rule: format!("must be {DISPLAY_NAME_RULE}"),
        })
    }
}

/// Registers `user_id` under `username`. `taken` says whether the name (in any case) already
/// belongs to someone. The display name defaults to the username.
pub fn decide_register(
    taken: bool,
    user_id: Uuid,
    username: &str,
    display_name: Option<&str>,
) -> Result<Vec<Event>> {
    validate_username(username)?;
    if let Some(name) = display_name {
        validate_display_name(name)?;
    }
    if taken {
        return Err(DomainError::UsernameTaken(username.to_owned()));
    }
    Ok(vec![Event::UserRegistered {
        user_id,
        username: username.to_owned(),
        display_name: display_name.unwrap_or(username).to_owned(),
    }])
}

/// Changes a display name; nothing happens when it is already the current one.
pub fn decide_update_profile(
    current: &str,
    user_id: Uuid,
    display_name: &str,
) -> Result<Vec<Event>> {
    validate_display_name(display_name)?;
    if current == display_name {
        return Ok(Vec::new());
    }
    Ok(vec![Event::ProfileUpdated {
        user_id,
        display_name: display_name.to_owned(),
    }])
}

/// An operator sets an account's standing. `current` is the account's standing, `None` for an
/// unknown user. Setting the standing it has decides nothing; a deleted account stays deleted.
pub fn decide_account_status(
    current: Option<AccountStatus>,
    user_id: Uuid,
    status: AccountStatus,
) -> Result<Vec<Event>> {
    match current {
        None => Err(DomainError::UserNotFound(user_id)),
        Some(now) if now == status => Ok(Vec::new()),
        Some(AccountStatus::Deleted) => Err(DomainError::Conflict(format!(
            "the account {user_id} is deleted; deletion is final"
        ))),
        Some(_) => Ok(vec![Event::AccountStatusChanged { user_id, status }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_standing_moves_between_active_and_blocked_and_deletion_is_final() {
        use AccountStatus::{Active, Blocked, Deleted};
        let id = Uuid::now_v7();
        let changed = |status| {
            vec![Event::AccountStatusChanged {
                user_id: id,
                status,
            }]
        };
        assert_eq!(
            decide_account_status(Some(Active), id, Blocked).unwrap(),
            changed(Blocked)
        );
        assert_eq!(
            decide_account_status(Some(Blocked), id, Active).unwrap(),
            changed(Active)
        );
        assert_eq!(
            decide_account_status(Some(Blocked), id, Deleted).unwrap(),
            changed(Deleted)
        );
        assert_eq!(
            decide_account_status(Some(Active), id, Deleted).unwrap(),
            changed(Deleted)
        );
        assert!(
            decide_account_status(Some(Blocked), id, Blocked)
                .unwrap()
                .is_empty()
        );
        assert!(
            decide_account_status(Some(Deleted), id, Deleted)
                .unwrap()
                .is_empty()
        );
        for to in [Active, Blocked] {
            assert!(matches!(
                decide_account_status(Some(Deleted), id, to),
                Err(DomainError::Conflict(_))
            ));
        }
        assert_eq!(
            decide_account_status(None, id, Blocked),
            Err(DomainError::UserNotFound(id))
        );
    }

    #[test]
    fn usernames_follow_the_rule() {
        for good in ["bob", "Alice_1", "a.b-c", "x23", &"a".repeat(32)] {
            assert!(validate_username(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "_bob",
            "-bob",
            "bob smith",
            "bøb",
            "bob\n",
            &"a".repeat(33),
        ] {
            let err = validate_username(bad).unwrap_err();
            assert!(
                err.to_string().contains("3 to 32 characters"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn given_a_free_name_when_registering_then_user_registered_with_default_display_name() {
        let id = Uuid::now_v7();
        let events = decide_register(false, id, "carol", None).unwrap();
        assert_eq!(
            events,
            vec![Event::UserRegistered {
                user_id: id,
                username: "carol".into(),
                display_name: "carol".into()
            }]
        );
    }

    #[test]
    fn given_a_taken_name_when_registering_then_conflict() {
        let err = decide_register(true, Uuid::now_v7(), "carol", Some("C")).unwrap_err();
        assert_eq!(err, DomainError::UsernameTaken("carol".into()));
    }

    #[test]
    fn display_names_are_checked_and_unchanged_names_are_no_ops() {
        let id = Uuid::now_v7();
        assert!(decide_register(false, id, "carol", Some("  ")).is_err());
        assert!(decide_register(false, id, "carol", Some("a\u{202E}b")).is_err());
        assert!(decide_update_profile("x", id, &"é".repeat(65)).is_err());
        assert!(
            decide_update_profile("Carol", id, "Carol")
                .unwrap()
                .is_empty()
        );
        assert_eq!(decide_update_profile("Carol", id, "Caz").unwrap().len(), 1);
    }
}
