//! Embedding sigma-keys in a Rust service: open a store, load the component
//! once, and call the typed `keys` and `auth` interfaces directly, no HTTP.
//!
//! Run it with `cargo run -p sigma-keys-host --example embed`.

use sigma_keys::{ErrorCode, Permission, Service, Settings};

async fn run(db: &std::path::Path) -> anyhow::Result<()> {
    // Compiles the embedded component once (wasmtime caches the result on disk).
    let service = Service::open(db, &Settings::default())?;

    // Create a key for a tenant: the raw key is available only here.
    let created = service
        .create(
            "acme",
            "Shopify Sync - Production",
            &[Permission::Read, Permission::UpdateData],
        )
        .await??;
    println!("created {} for tenant acme", created.key.id);

    // Check it for a permission, and for an HTTP request.
    let verified = service.verify(&created.raw_key, Permission::Read).await??;
    assert_eq!(verified.tenant, "acme");
    let verified = service
        .authorize(&created.raw_key, "PUT", "/api/v1/records/r1")
        .await??;
    assert_eq!(verified.permission, Permission::UpdateData);
    let denied = service
        .verify(&created.raw_key, Permission::DeleteModel)
        .await?;
    assert_eq!(
        denied.map_err(|e| e.code),
        Err(ErrorCode::InsufficientPermission)
    );
    println!(
        "verified: {} may update-data, may not delete-model",
        verified.key_id
    );

    // List, deactivate (the key is then refused), delete.
    assert_eq!(service.list("acme").await??.len(), 1);
    service.deactivate("acme", &created.key.id).await??;
    let refused = service.verify(&created.raw_key, Permission::Read).await?;
    assert_eq!(
        refused.map_err(|e| e.code),
        Err(ErrorCode::ApiKeyDeactivated)
    );
    service.delete("acme", &created.key.id).await??;
    assert!(service.list("acme").await??.is_empty());
    println!("deactivated and deleted {}", created.key.id);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    tokio::runtime::Runtime::new()?.block_on(run(&dir.path().join("keys.db")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().unwrap();
    }
}
