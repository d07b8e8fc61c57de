//! Online/offline status.

use missive_events::Presence;
use uuid::Uuid;

use crate::{Event, Result};

/// Every presence report is recorded: even a repeated one moves `last_seen` forward.
pub fn decide_presence(user_id: Uuid, status: Presence) -> Result<Vec<Event>> {
    Ok(vec![Event::PresenceChanged { user_id, status }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_reports_still_produce_events() {
        let u = Uuid::now_v7();
        assert_eq!(
            decide_presence(u, Presence::Online).unwrap(),
            vec![Event::PresenceChanged {
                user_id: u,
                status: Presence::Online
            }]
        );
    }
}
