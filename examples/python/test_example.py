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


def test_expiry_rolling_and_the_audit_trail(keys):
    import time

    keys, _ = keys
    soon = int(time.time() * 1000) + 60_000
    created = keys.create("acme", "sync", ["read"], expires_at=soon)
    assert getattr(created.key, "expires-at") == soon
    with pytest.raises(KeyError_) as past:
        keys.create("acme", "late", ["read"], expires_at=1)
    assert past.value.code == "invalid-request"

    rolled = keys.roll("acme", created.key.id, 30)
    new_key = rolled.created.key
    assert (new_key.name, getattr(new_key, "expires-at")) == ("sync", soon)
    assert getattr(rolled.previous, "expires-at") <= int(time.time() * 1000) + 30_000
    assert getattr(keys.verify(getattr(created, "raw-key"), "read"), "key-id") == created.key.id
    new_raw = getattr(rolled.created, "raw-key")
    assert getattr(keys.verify(new_raw, "read"), "key-id") == new_key.id

    keys.roll("acme", new_key.id)
    with pytest.raises(KeyError_) as expired:
        keys.verify(new_raw, "read")
    assert expired.value.code == "api-key-expired"
    with pytest.raises(KeyError_) as inactive:
        keys.roll("acme", new_key.id)
    assert inactive.value.code == "api-key-inactive"
    assert keys.get("acme", new_key.id).active is False

    page = keys.events("acme", limit=3)
    assert [e.kind for e in page.events] == ["rolled", "created", "rolled"]
    assert (page.events[0].actor.via, page.events[0].actor.subject) == ("cli", None)
    assert page.events[0].details.tag == "rolled"
    rest = keys.events("acme", cursor=page.next)
    assert [e.kind for e in rest.events] == ["created", "created"]
    assert rest.next is None
    assert keys.events("globex").events == []
