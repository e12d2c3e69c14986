"""The Python walkthrough, step by step, against a real SQLite file."""

import os
import pathlib
import sqlite3

import pytest

from sigma_keys_host import KeyError_, SigmaKeys

ROOT = pathlib.Path(__file__).resolve().parents[2]
WASM = os.environ.get(
    "SIGMA_KEYS_COMPONENT_WASM",
    str(ROOT / "target/guest/wasm32-wasip2/release/sigma_keys_guest.wasm"),
)


@pytest.fixture()
def keys(tmp_path):
    return SigmaKeys(WASM, str(tmp_path / "keys.db")), tmp_path / "keys.db"


def test_the_key_lifecycle(keys):
    keys, db = keys
    created = keys.create("acme", " Shopify Sync ", ["update-data", "read"])
    raw = getattr(created, "raw-key")
    assert raw.startswith("sigma_sk_live_") and len(raw) == 50
    assert created.key.name == "Shopify Sync"
    assert created.key.permissions == ["read", "update-data"]

    listed = keys.list("acme")
    assert [k.id for k in listed] == [created.key.id]
    assert keys.list("globex") == []

    verified = keys.verify(raw, "update-data")
    assert (getattr(verified, "key-id"), verified.tenant, verified.permission) == (created.key.id, "acme", "update-data")
    with pytest.raises(KeyError_) as denied:
        keys.verify(raw, "delete-model")
    assert denied.value.code == "insufficient-permission"

    assert keys.authorize(raw, "PUT", "/api/v1/records/r1/variants/v1").permission == "update-data"
    with pytest.raises(KeyError_) as unknown:
        keys.authorize(raw, "GET", "/api/v1/widgets")
    assert unknown.value.code == "unknown-resource"
    assert getattr(keys.list("acme")[0], "last-used-at") is not None

    off = keys.deactivate("acme", created.key.id)
    assert getattr(off, "deactivated-at") is not None
    with pytest.raises(KeyError_) as refused:
        keys.verify(raw, "read")
    assert refused.value.code == "api-key-deactivated"

    with pytest.raises(KeyError_) as other:
        keys.delete("globex", created.key.id)
    assert other.value.code == "not-found"
    keys.delete("acme", created.key.id)
    assert keys.list("acme") == []

    # Only the hash was ever stored.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    assert raw.encode() not in db.read_bytes()


def test_bad_input_is_refused(keys):
    keys, _ = keys
    for name, permissions in [("", ["read"]), ("ok", []), ("ok", ["read", "read"])]:
        with pytest.raises(KeyError_) as e:
            keys.create("acme", name, permissions)
        assert e.value.code == "invalid-request" and e.value.message
    with pytest.raises(KeyError_) as e:
        keys.verify("sigma_sk_live_nope", "read")
    assert e.value.code == "invalid-api-key"
    assert keys.list("acme") == []
