//! `missive token` run as a real process: it signs with the given secret or the one kept in
//! the data directory, and says what to do when there is none.

use std::process::Command;

use uuid::Uuid;

fn missive() -> Command {
    Command::new(env!("CARGO_BIN_EXE_missive"))
}

#[test]
fn token_is_signed_with_the_given_secret() {
    let user = Uuid::now_v7();
    let out = missive()
        .args(["token", &user.to_string(), "--jwt-secret", "s3cret"])
        .env_remove("MISSIVE_JWT_SECRET")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf8");
    let claims = missive_api::Secret::new(b"s3cret".to_vec())
        .verify(token.trim(), chrono::Utc::now().timestamp())
        .expect("valid token");
    assert_eq!(claims.sub, user);
    assert!(
        missive_api::Secret::new(b"other".to_vec())
            .verify(token.trim(), chrono::Utc::now().timestamp())
            .is_err()
    );
}

#[test]
fn token_uses_the_data_directory_secret_or_explains_its_absence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = Uuid::now_v7();
    let missing = missive()
        .args(["token", &user.to_string(), "--data-dir"])
        .arg(dir.path())
        .env_remove("MISSIVE_JWT_SECRET")
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no JWT secret"), "{stderr}");

    let secret = missive_cli::secret::load_or_generate(dir.path()).expect("generate");
    assert_eq!(
        missive_cli::secret::load_or_generate(dir.path()).expect("reload"),
        secret,
        "the kept secret is reused"
    );
    let out = missive()
        .args(["token", &user.to_string(), "--data-dir"])
        .arg(dir.path())
        .env_remove("MISSIVE_JWT_SECRET")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).expect("utf8");
    let claims = missive_api::Secret::new(secret)
        .verify(token.trim(), chrono::Utc::now().timestamp())
        .expect("valid token");
    assert_eq!(claims.sub, user);

    let bad = missive()
        .args(["token", "not-a-uuid"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
}
