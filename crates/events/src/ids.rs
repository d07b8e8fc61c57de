//! Identifiers derived deterministically from other identifiers.

use uuid::Uuid;

/// Namespace for direct-conversation ids (UUIDv5).
const DIRECT_CONVERSATION_NS: Uuid = Uuid::from_u128(0x6d69_7373_6976_6500_0000_0000_0000_0001);

/// The id of the direct conversation between two users: the same whichever side asks.
pub fn direct_conversation_id(a: Uuid, b: Uuid) -> Uuid {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(lo.as_bytes());
    name[16..].copy_from_slice(hi.as_bytes());
    Uuid::new_v5(&DIRECT_CONVERSATION_NS, &name)
}

/// The partition key of a friendship: the unordered pair, smaller id first.
pub fn pair_key(a: Uuid, b: Uuid) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_id_is_symmetric_and_distinct() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let c = Uuid::now_v7();
        assert_eq!(direct_conversation_id(a, b), direct_conversation_id(b, a));
        assert_ne!(direct_conversation_id(a, b), direct_conversation_id(a, c));
        assert_eq!(pair_key(a, b), pair_key(b, a));
    }
}
