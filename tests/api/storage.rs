//! Keys at rest: sealed, bound to their row, and useless without the right master key.

use keyward::keys::custody::sealed;
use keyward::keys::Algorithm;
use keyward::keys::KeyRecord;
use keyward::master_key::Keyring;
use keyward::seal::MasterKey;
use keyward::startup::Application;

use crate::helpers::{database_bytes, on_both_stores, spawn_app_on, spawn_app_with_algorithm, spawn_in};

pub(crate) fn private_der(keyring: &Keyring, record: &KeyRecord) -> Vec<u8> {
    let (blob, sealed_by) = record.sealed().unwrap();
    keyring.open(blob, &[&record.kid, &record.key_set, record.algorithm.as_str()], sealed_by).unwrap().to_vec()
}

#[tokio::test]
async fn the_database_holds_no_private_key_in_the_clear() {
    for algorithm in [Algorithm::Rs256, Algorithm::Es256] {
        let app = spawn_app_with_algorithm(algorithm).await;
        app.force_rotate().await;
        let records = app.store.keys().await.unwrap();
        assert_eq!(records.len(), 3, "previous, current, next");
        let stored = database_bytes(app.dir.path());
        assert!(!stored.windows(11).any(|w| w == b"PRIVATE KEY"), "a PEM private key is stored");
        for record in &records {
            let der = private_der(&app.keyring(), record);
            assert!(der.len() > 100);
            // No 24-byte stretch of the PKCS#8 DER appears anywhere in the files.
            for window in der.chunks(24).filter(|c| c.len() == 24) {
                assert!(
                    !stored.windows(24).any(|w| w == window),
                    "{algorithm}: private key bytes found in the database"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_sealed_blob_moved_to_another_row_or_altered_fails_to_open() {
    let app = spawn_app_with_algorithm(Algorithm::Es256).await;
    let records = app.store.keys().await.unwrap();
    let (a, b) = (&records[0], &records[1]);
    assert!(sealed::open(a, &app.keyring()).is_ok());
    assert!(sealed::open(b, &app.keyring()).is_ok());

    // Move A's sealed private key into B's row.
    sqlx::query("UPDATE keys SET sealed_private = ? WHERE kid = ?")
        .bind(a.sealed().unwrap().0)
        .bind(&b.kid)
        .execute(app.pool())
        .await
        .unwrap();
    let moved = app.store.keys().await.unwrap().into_iter().find(|r| r.kid == b.kid).unwrap();
    let err = sealed::open(&moved, &app.keyring()).unwrap_err();
    assert!(format!("{err:#}").contains("wrong master key, or the row was altered or moved"), "{err:#}");

    // Flip one byte of A's blob in place.
    let mut flipped = a.sealed().unwrap().0.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    sqlx::query("UPDATE keys SET sealed_private = ? WHERE kid = ?")
        .bind(&flipped)
        .bind(&a.kid)
        .execute(app.pool())
        .await
        .unwrap();
    let altered = app.store.keys().await.unwrap().into_iter().find(|r| r.kid == a.kid).unwrap();
    let err = sealed::open(&altered, &app.keyring()).unwrap_err();
    assert!(format!("{err:#}").contains("wrong master key, or the row was altered or moved"), "{err:#}");

    // A record claiming another algorithm does not open either.
    let mut relabelled = a.clone();
    relabelled.algorithm = Algorithm::Es384;
    assert!(sealed::open(&relabelled, &app.keyring()).is_err());
}

on_both_stores! {
    async fn the_wrong_master_key_refuses_to_start_and_changes_nothing(backend: Backend) {
        let app = spawn_app_on(backend, |c| c.key_sets[0].algorithm = Algorithm::Es256).await;
        let before = serde_json::to_value(app.store.keys().await.unwrap()).unwrap();
        let blobs_before: Vec<_> = app.store.keys().await.unwrap().into_iter().map(|r| r.sealed().map(|(blob, _)| blob.to_vec())).collect();

        let err = Application::build(app.config.clone(), MasterKey::generate(), 1).await.err().expect("must refuse");
        let message = format!("{err:#}");
        assert!(message.contains("sealed with master key") && message.contains("nothing was changed"), "{message}");

        assert_eq!(serde_json::to_value(app.store.keys().await.unwrap()).unwrap(), before);
        let blobs_after: Vec<_> = app.store.keys().await.unwrap().into_iter().map(|r| r.sealed().map(|(blob, _)| blob.to_vec())).collect();
        assert_eq!(blobs_before, blobs_after);
    }

    async fn keys_survive_a_restart_with_the_same_master_key(backend: Backend) {
        let first = spawn_app_on(backend, |c| c.key_sets[0].algorithm = Algorithm::Es256).await;
        let kid = first.jwks("/.well-known/jwks.json").await["keys"][0]["kid"].clone();
        // The first server keeps running: two servers on one database is a supported setup.
        let second = spawn_in(tempfile::tempdir().unwrap(), first.config.clone(), first.master.clone()).await;
        assert_eq!(second.jwks("/.well-known/jwks.json").await["keys"][0]["kid"], kid);
        assert_eq!(second.store.keys().await.unwrap().len(), 2, "no new key on restart");
    }
}
