//! The contract every [`KeyVault`] adapter must honour, written once and run against each
//! (`tests/sqlite.rs`, `tests/scylla.rs`, and the [`CachedVault`](crate::CachedVault) in
//! front of them). Each check takes a fresh, empty vault.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

use crate::{
    KeyRing, KeyState, KeyVault, SEALED_PREFIX, SealError, UserKey, VaultError, seal, seal_with,
    unseal, unseal_with,
};

/// A user without a key is `Missing`; `create` makes a key once and returns it ever after.
pub async fn create_is_idempotent(vault: Arc<dyn KeyVault>) {
    let user = Uuid::now_v7();
    assert_eq!(vault.key(user).await, Ok(KeyState::Missing));
    let key = vault.create(user).await.expect("create");
    assert_eq!(vault.create(user).await, Ok(key.clone()));
    assert_eq!(vault.key(user).await, Ok(KeyState::Active(key.clone())));
    assert_eq!(vault.create(user).await, Ok(key));
}

/// Sixteen concurrent first creates of one user all get the same key.
pub async fn concurrent_creates_yield_one_key(vault: Arc<dyn KeyVault>) {
    for _ in 0..3 {
        let user = Uuid::now_v7();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let vault = vault.clone();
                tokio::spawn(async move { vault.create(user).await })
            })
            .collect();
        let mut keys = Vec::new();
        for task in tasks {
            keys.push(task.await.expect("join").expect("create"));
        }
        let stored = match vault.key(user).await.expect("read") {
            KeyState::Active(key) => key,
            other => panic!("expected an active key, found {other:?}"),
        };
        for key in &keys {
            assert_eq!(
                key, &stored,
                "every concurrent create returns the stored key"
            );
        }
    }
}

/// After `destroy`, the key is `Destroyed` and `create` refuses: it is never resurrected.
pub async fn destroy_is_final(vault: Arc<dyn KeyVault>) {
    let user = Uuid::now_v7();
    let key = vault.create(user).await.expect("create");
    let sealed = seal(&key, user, "alice");
    vault.destroy(user).await.expect("destroy");
    assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
    assert_eq!(vault.create(user).await, Err(VaultError::Destroyed));
    assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
    assert_eq!(
        seal_with(vault.as_ref(), user, "x").await,
        Err(VaultError::Destroyed)
    );
    assert_eq!(unseal_with(vault.as_ref(), user, &sealed).await, Ok(None));
}

/// `destroy` can be repeated, and works on a user who never had a key: they never get one.
pub async fn destroy_is_idempotent_and_needs_no_key(vault: Arc<dyn KeyVault>) {
    let user = Uuid::now_v7();
    vault.create(user).await.expect("create");
    vault.destroy(user).await.expect("destroy");
    vault.destroy(user).await.expect("destroy again");
    assert_eq!(vault.key(user).await, Ok(KeyState::Destroyed));
    assert_eq!(vault.create(user).await, Err(VaultError::Destroyed));

    let never = Uuid::now_v7();
    vault.destroy(never).await.expect("destroy without a key");
    assert_eq!(vault.key(never).await, Ok(KeyState::Destroyed));
    assert_eq!(vault.create(never).await, Err(VaultError::Destroyed));
    vault.destroy(never).await.expect("destroy again");
    assert_eq!(vault.key(never).await, Ok(KeyState::Destroyed));
}

/// Each user has a key of their own; destroying one leaves the others as they were.
pub async fn other_users_are_unaffected(vault: Arc<dyn KeyVault>) {
    let users: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut keys = Vec::new();
    for user in &users {
        keys.push(vault.create(*user).await.expect("create"));
    }
    let distinct: HashSet<[u8; 32]> = keys.iter().map(|k| *k.expose_bytes()).collect();
    assert_eq!(
        distinct.len(),
        users.len(),
        "every user gets a key of their own"
    );
    vault.destroy(users[2]).await.expect("destroy");
    for (i, (user, key)) in users.iter().zip(&keys).enumerate() {
        let expected = if i == 2 {
            KeyState::Destroyed
        } else {
            KeyState::Active(key.clone())
        };
        assert_eq!(vault.key(*user).await, Ok(expected), "user {i}");
    }
    assert_eq!(vault.create(users[3]).await, Ok(keys[3].clone()));
    let missing = Uuid::now_v7();
    assert_eq!(vault.key(missing).await, Ok(KeyState::Missing));
}

/// A value sealed with a vault's key opens with it and its owner only, unchanged; a changed
/// value or another key does not open; plaintext passes through.
pub async fn sealed_values_open_only_with_their_key_and_owner(vault: Arc<dyn KeyVault>) {
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let alice_key = vault.create(alice).await.expect("create");
    let bob_key = vault.create(bob).await.expect("create");
    let sealed = seal_with(vault.as_ref(), alice, "Alice Liddell")
        .await
        .expect("seal");
    assert!(sealed.starts_with(SEALED_PREFIX));
    assert!(!sealed.contains("Alice"));
    // The key read back from the vault (not only the one create returned) opens it.
    let stored = match vault.key(alice).await.expect("read") {
        KeyState::Active(key) => key,
        other => panic!("expected an active key, found {other:?}"),
    };
    assert_eq!(
        unseal(&stored, alice, &sealed).as_deref(),
        Ok("Alice Liddell")
    );
    assert_eq!(
        unseal(&alice_key, alice, &sealed).as_deref(),
        Ok("Alice Liddell")
    );
    assert_eq!(
        unseal_with(vault.as_ref(), alice, &sealed).await,
        Ok(Some("Alice Liddell".into()))
    );
    // Wrong owner (moved to bob's data), wrong key, a fresh key.
    assert_eq!(
        unseal(&alice_key, bob, &sealed),
        Err(SealError::Authentication)
    );
    assert_eq!(unseal_with(vault.as_ref(), bob, &sealed).await, Ok(None));
    assert_eq!(
        unseal(&bob_key, alice, &sealed),
        Err(SealError::Authentication)
    );
    let stranger = UserKey::generate().expect("key");
    assert_eq!(
        unseal(&stranger, alice, &sealed),
        Err(SealError::Authentication)
    );
    // Tampered: one character of the encoding changed.
    let mut tampered: Vec<char> = sealed.chars().collect();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    assert_eq!(
        unseal(&alice_key, alice, &tampered),
        Err(SealError::Authentication)
    );
    assert_eq!(
        unseal_with(vault.as_ref(), alice, &tampered).await,
        Ok(None)
    );
    // Plaintext from before sealing: returned as is, also for users without a key.
    let nobody = Uuid::now_v7();
    assert_eq!(unseal(&alice_key, alice, "plain").as_deref(), Ok("plain"));
    assert_eq!(
        unseal_with(vault.as_ref(), nobody, "plain").await,
        Ok(Some("plain".into()))
    );
    assert_eq!(vault.key(nobody).await, Ok(KeyState::Missing));
}

/// Once a user's key is destroyed, their sealed values read as `None` (and others' still
/// open), value by value and through a [`KeyRing`].
pub async fn shredded_values_read_as_none(vault: Arc<dyn KeyVault>) {
    let (alice, bob, ghost) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let page: Vec<(Uuid, String)> = vec![
        (
            alice,
            seal_with(vault.as_ref(), alice, "hi bob")
                .await
                .expect("seal"),
        ),
        (
            bob,
            seal_with(vault.as_ref(), bob, "hi alice")
                .await
                .expect("seal"),
        ),
        (
            alice,
            seal_with(vault.as_ref(), alice, "bye").await.expect("seal"),
        ),
        (alice, "from before sealing".to_owned()),
    ];
    let read = |vault: Arc<dyn KeyVault>, page: Vec<(Uuid, String)>| async move {
        let mut ring = KeyRing::new(vault.as_ref());
        let mut out = Vec::new();
        for (owner, value) in &page {
            let one = unseal_with(vault.as_ref(), *owner, value)
                .await
                .expect("read");
            assert_eq!(ring.unseal(*owner, value).await.expect("read"), one);
            out.push(one);
        }
        out
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        read(vault.clone(), page.clone()).await,
        vec![
            some("hi bob"),
            some("hi alice"),
            some("bye"),
            some("from before sealing"),
        ]
    );
    // Sealed for a user who has no key (e.g. an empty vault put in front of the log): not a
    // shredding but an error, both ways.
    let lost = seal(&UserKey::generate().expect("key"), ghost, "lost");
    assert!(matches!(
        unseal_with(vault.as_ref(), ghost, &lost).await,
        Err(VaultError::Unavailable(_))
    ));
    assert!(matches!(
        KeyRing::new(vault.as_ref()).unseal(ghost, &lost).await,
        Err(VaultError::Unavailable(_))
    ));
    vault.destroy(alice).await.expect("destroy");
    assert_eq!(
        read(vault.clone(), page).await,
        vec![None, some("hi alice"), None, some("from before sealing"),]
    );
}
