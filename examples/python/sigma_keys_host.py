"""Run the sigma-keys component from Python with wasmtime-py's component API.

The component imports `sigma:api-keys/store` (implemented here over the
standard library's sqlite3), `sigma:api-keys/request-log`, `wasi:config/store`
and standard WASI (provided by wasmtime). It exports the typed `keys` and
`auth` interfaces called below.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Optional

import wasmtime
import wasmtime.component as wc

VERSION = "0.1.0"


def field(record: wc.Record, name: str) -> Any:
    """A record field by its WIT name (`created-at`)."""
    return getattr(record, name)


class SqliteStore:
    """`sigma:api-keys/store` over sqlite3: the SHA-256 hash is the only form of a key stored."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,
                key_hash BLOB NOT NULL UNIQUE, permissions TEXT NOT NULL,
                created_at INTEGER NOT NULL, last_used_at INTEGER, deactivated_at INTEGER)"""
        )

    COLUMNS = "id, tenant, name, permissions, created_at, last_used_at, deactivated_at"

    @staticmethod
    def _record(row: Any) -> wc.Record:
        # Record fields keep their WIT (kebab-case) names.
        r = wc.Record()
        fields = ["id", "tenant", "name", "permissions", "created-at", "last-used-at", "deactivated-at"]
        values = [row[0], row[1], row[2], [p for p in row[3].split(",") if p], row[4], row[5], row[6]]
        for field, value in zip(fields, values):
            setattr(r, field, value)
        return r

    # Each method returns the component's `result`. wasmtime-py wraps a value
    # in a Variant only when Python types cannot tell its cases apart.
    # `store-error` is such a variant (`conflict` and `limit-reached` both
    # carry nothing), so errors are Variant("conflict" | "limit-reached" |
    # "unavailable", ...); every `result` around it is then told apart by
    # type, so an ok value stands for itself.
    def insert(self, key: wc.Record, hash_: bytes, tenant_limit: int) -> Any:
        try:
            # Count and insert in one transaction, so the limit holds.
            self.db.execute("BEGIN IMMEDIATE")
            (n,) = self.db.execute("SELECT count(*) FROM api_keys WHERE tenant = ?", (key.tenant,)).fetchone()
            if n >= tenant_limit:
                self.db.execute("ROLLBACK")
                return wc.Variant("limit-reached", None)
            self.db.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.id, key.tenant, key.name, bytes(hash_), ",".join(key.permissions),
                 field(key, "created-at"), field(key, "last-used-at"), field(key, "deactivated-at")),
            )
            self.db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            return wc.Variant("conflict", None)
        return None

    def find_by_hash(self, hash_: bytes) -> Any:
        row = self.db.execute(f"SELECT {self.COLUMNS} FROM api_keys WHERE key_hash = ?", (bytes(hash_),)).fetchone()
        return self._record(row) if row else None

    def list(self, tenant: str) -> Any:
        rows = self.db.execute(
            f"SELECT {self.COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, rowid", (tenant,)
        ).fetchall()
        return [self._record(r) for r in rows]

    def deactivate(self, tenant: str, id_: str, at: int) -> Any:
        self.db.execute(
            "UPDATE api_keys SET deactivated_at = ? WHERE tenant = ? AND id = ? AND deactivated_at IS NULL",
            (at, tenant, id_),
        )
        row = self.db.execute(f"SELECT {self.COLUMNS} FROM api_keys WHERE tenant = ? AND id = ?", (tenant, id_)).fetchone()
        return self._record(row) if row else None

    def remove(self, tenant: str, id_: str) -> Any:
        cur = self.db.execute("DELETE FROM api_keys WHERE tenant = ? AND id = ?", (tenant, id_))
        return cur.rowcount > 0

    def record_use(self, id_: str, at: int) -> Any:
        self.db.execute(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            (at, id_, at),
        )
        return None


@dataclass
class KeyError_(Exception):
    """An `error` returned by the component: `code` is e.g. "insufficient-permission"."""

    code: str
    message: str


class SigmaKeys:
    """The component's `keys` and `auth` interfaces as Python methods."""

    def __init__(self, wasm_path: str, db_path: str, config: Optional[dict[str, str]] = None) -> None:
        self.engine = wasmtime.Engine()
        self.component = wc.Component.from_file(self.engine, wasm_path)
        self.store_impl = SqliteStore(db_path)
        config = dict(config or {})
        linker = wc.Linker(self.engine)
        linker.add_wasip2()
        linker.add_wasi_http()
        with linker.root() as root:
            with root.add_instance(f"sigma:api-keys/store@{VERSION}") as store:
                s = self.store_impl
                store.add_func("insert", lambda _, key, hash_, limit: s.insert(key, hash_, limit))
                store.add_func("find-by-hash", lambda _, hash_: s.find_by_hash(hash_))
                store.add_func("list", lambda _, tenant: s.list(tenant))
                store.add_func("deactivate", lambda _, tenant, id_, at: s.deactivate(tenant, id_, at))
                store.add_func("remove", lambda _, tenant, id_: s.remove(tenant, id_))
                store.add_func("record-use", lambda _, id_, at: s.record_use(id_, at))
            with root.add_instance(f"sigma:api-keys/request-log@{VERSION}") as log:
                log.add_func("identify", lambda _, tenant, key_id, subject: None)
            with root.add_instance("wasi:config/store@0.2.0-rc.1") as cfg:
                # Untagged results again: the value stands for ok.
                cfg.add_func("get", lambda _, key: config.get(key))
                cfg.add_func("get-all", lambda _: list(config.items()))
        self.linker = linker

    def _call(self, interface: str, func: str, *args: Any) -> Any:
        # A fresh store and instance per call, as the Rust host does.
        store = wasmtime.Store(self.engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_wasi_http()
        instance = self.linker.instantiate(store, self.component)
        iface = instance.get_export_index(store, f"sigma:api-keys/{interface}@{VERSION}")
        f = instance.get_func(store, instance.get_export_index(store, func, iface))
        result = f(store, *args)
        f.post_return(store)
        if isinstance(result, wc.Variant):
            if result.tag == "err":
                raise KeyError_(result.payload.code, result.payload.message)
            return result.payload
        if isinstance(result, wc.Record) and set(vars(result)) == {"code", "message"}:
            # An untagged result's error case: the `error` record itself.
            raise KeyError_(result.code, result.message)
        return result

    def create(self, tenant: str, name: str, permissions: list[str]) -> Any:
        return self._call("keys", "create", tenant, name, permissions)

    def list(self, tenant: str) -> Any:
        return self._call("keys", "list", tenant)

    def deactivate(self, tenant: str, key_id: str) -> Any:
        return self._call("keys", "deactivate", tenant, key_id)

    def delete(self, tenant: str, key_id: str) -> None:
        self._call("keys", "delete", tenant, key_id)

    def verify(self, raw_key: str, permission: str) -> Any:
        return self._call("auth", "verify", raw_key, permission)

    def authorize(self, raw_key: str, method: str, path: str) -> Any:
        return self._call("auth", "authorize", raw_key, method, path)
