//! Component-level tests: the typed `keys` and `auth` exports, called through
//! the host library with a real SQLite store and no HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sigma_keys::{ErrorCode, Permission, Service, Settings};

#[path = "../../tests/pg_cluster.rs"]
mod pg_cluster;

/// The typed interface over PostgreSQL, as a Rust embedder opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_interface_on_postgres() {
    let location = pg_cluster::database_url().parse().unwrap();
    let svc = Service::open_at(
        &location,
        &sigma_keys::store::Options::default(),
        &Settings::default(),
    )
    .await
    .unwrap();
    let created = svc
        .create("acme", "pg", &[Permission::Read])
        .await
        .unwrap()
        .unwrap();
    let verified = svc
        .verify(&created.raw_key, Permission::Read)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.tenant, "acme");
    let got = svc.get("acme", &created.key.id).await.unwrap().unwrap();
    assert_eq!(got.id, created.key.id);
    svc.deactivate("acme", &created.key.id)
        .await
        .unwrap()
        .unwrap();
    let refused = svc
        .verify(&created.raw_key, Permission::Read)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::ApiKeyDeactivated);
    svc.close().await;
    // Written on close: the use is in the database.
    let again = Service::open_at(
        &location,
        &sigma_keys::store::Options::default(),
        &Settings::default(),
    )
    .await
    .unwrap();
    let listed = again.list("acme").await.unwrap().unwrap();
    assert!(listed[0].last_used_at.is_some());
    again.close().await;
}

fn service() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::open(&dir.path().join("keys.db"), &Settings::default()).unwrap();
    (dir, service)
}

#[tokio::test]
async fn the_key_lifecycle_through_the_typed_interface() {
    let (_dir, svc) = service();
    let created = svc
        .create(
            "acme",
            " sync ",
            &[Permission::UpdateData, Permission::Read],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.key.name, "sync");
    assert_eq!(
        created.key.permissions,
        vec![Permission::Read, Permission::UpdateData]
    );
    assert!(created.raw_key.starts_with("sigma_sk_live_") && created.raw_key.len() == 50);

    let list = svc.list("acme").await.unwrap().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, created.key.id);
    assert!(svc.list("globex").await.unwrap().unwrap().is_empty());

    let v = svc
        .verify(&created.raw_key, Permission::UpdateData)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.key_id.as_str(), v.tenant.as_str(), v.permission),
        (created.key.id.as_str(), "acme", Permission::UpdateData)
    );
    let e = svc
        .verify(&created.raw_key, Permission::DeleteModel)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InsufficientPermission);

    let v = svc
        .authorize(&created.raw_key, "PUT", "/api/v1/records/r1/variants/v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.permission, Permission::UpdateData);
    let e = svc
        .authorize(&created.raw_key, "GET", "/api/v1/nope")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownResource);
    let e = svc
        .authorize("sigma_sk_live_x", "GET", "/api/v1/records")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidApiKey);

    // lastUsedAt was recorded by the uses above.
    assert!(
        svc.list("acme").await.unwrap().unwrap()[0]
            .last_used_at
            .is_some()
    );

    let off = svc
        .deactivate("acme", &created.key.id)
        .await
        .unwrap()
        .unwrap();
    assert!(off.deactivated_at.is_some());
    assert_eq!(
        svc.deactivate("acme", &created.key.id)
            .await
            .unwrap()
            .unwrap(),
        off
    );
    let e = svc
        .verify(&created.raw_key, Permission::Read)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ApiKeyDeactivated);

    assert_eq!(
        svc.delete("globex", &created.key.id)
            .await
            .unwrap()
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    svc.delete("acme", &created.key.id).await.unwrap().unwrap();
    assert_eq!(
        svc.delete("acme", &created.key.id)
            .await
            .unwrap()
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    let e = svc
        .verify(&created.raw_key, Permission::Read)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidApiKey);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let (_dir, svc) = service();
    for (tenant, name, permissions) in [
        ("acme", "", vec![Permission::Read]),
        ("acme", "ok", vec![]),
        ("acme", "ok", vec![Permission::Read, Permission::Read]),
        ("", "ok", vec![Permission::Read]),
    ] {
        let e = svc
            .create(tenant, name, &permissions)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::InvalidRequest,
            "{tenant:?} {name:?} {permissions:?}"
        );
        assert!(!e.message.is_empty());
    }
    assert!(svc.list("acme").await.unwrap().unwrap().is_empty());
}

#[tokio::test]
async fn the_route_table_through_the_typed_interface() {
    let (_dir, svc) = service();
    for (method, path, expected) in [
        ("GET", "/api/v1/option-lists/o1", Permission::Read),
        (
            "POST",
            "/api/v1/catalogs/c1/assignments",
            Permission::UpdateData,
        ),
        ("DELETE", "/api/v1/records/schemas", Permission::DeleteData),
        ("PATCH", "/api/v1/roles/r1", Permission::UpdateModel),
        ("DELETE", "/api/v1/workflows/w1", Permission::DeleteModel),
    ] {
        assert_eq!(
            svc.required_permission(method, path)
                .await
                .unwrap()
                .unwrap(),
            expected,
            "{method} {path}"
        );
    }
    let e = svc
        .required_permission("TRACE", "/api/v1/records")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MethodNotAllowed);
}

#[tokio::test]
async fn a_warm_session_sees_every_change_at_once() {
    let (_dir, svc) = service();
    let created = svc
        .create("acme", "hot", &[Permission::Read])
        .await
        .unwrap()
        .unwrap();
    let mut session = svc.session().await.unwrap();
    for _ in 0..100 {
        let v = session
            .verify(&created.raw_key, Permission::Read)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.key_id, created.key.id);
    }
    svc.deactivate("acme", &created.key.id)
        .await
        .unwrap()
        .unwrap();
    let e = session
        .verify(&created.raw_key, Permission::Read)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ApiKeyDeactivated);
    svc.delete("acme", &created.key.id).await.unwrap().unwrap();
    let e = session
        .authorize(&created.raw_key, "GET", "/api/v1/records")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidApiKey);
}
