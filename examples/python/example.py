"""The walkthrough: create, list, verify, authorize, roll, deactivate, verify again.

    python example.py path/to/sigma_keys_guest.wasm [keys.db]
"""

import sys
import tempfile

from sigma_keys_host import KeyError_, SigmaKeys


def main(wasm: str, db: str) -> None:
    keys = SigmaKeys(wasm, db)
    created = keys.create("acme", "Shopify Sync - Production", ["read", "update-data"])
    raw_key = getattr(created, "raw-key")
    print("created", created.key.id, "- the raw key is shown only once")
    print("listed", [k.id for k in keys.list("acme")])
    print("verify read:", getattr(keys.verify(raw_key, "read"), "key-id"))
    print("authorize PUT /api/v1/records/r1:", keys.authorize(raw_key, "PUT", "/api/v1/records/r1").permission)
    rolled = keys.roll("acme", created.key.id, 60)
    print("rolled to", rolled.created.key.id, "- the old key works for 60 s more")
    keys.deactivate("acme", rolled.created.key.id)
    try:
        keys.verify(getattr(rolled.created, "raw-key"), "read")
    except KeyError_ as e:
        print("after deactivate:", e.code)
    print("events", [e.kind for e in keys.events("acme").events])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else tempfile.mktemp(suffix=".db"))
