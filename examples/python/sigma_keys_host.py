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

VERSION = "0.2.0"


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
                created_at INTEGER NOT NULL, last_used_at INTEGER, deactivated_at INTEGER,
                expires_at INTEGER)"""
        )
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS key_events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                tenant TEXT NOT NULL, key_id TEXT NOT NULL, at INTEGER NOT NULL,
                kind TEXT NOT NULL, via TEXT NOT NULL, subject TEXT, details TEXT NOT NULL)"""
        )

    COLUMNS = "id, tenant, name, permissions, created_at, last_used_at, deactivated_at, expires_at"
    EVENT_COLUMNS = "seq, id, tenant, key_id, at, kind, via, subject, details"

    @staticmethod
    def _record(row: Any) -> wc.Record:
        # Record fields keep their WIT (kebab-case) names.
        r = wc.Record()
        fields = ["id", "tenant", "name", "permissions", "created-at", "last-used-at", "deactivated-at", "expires-at"]
        values = [row[0], row[1], row[2], [p for p in row[3].split(",") if p], row[4], row[5], row[6], row[7]]
        for field, value in zip(fields, values):
            setattr(r, field, value)
        return r

    @staticmethod
    def _logged(row: Any) -> wc.Record:
        event = wc.Record()
        fields = ["id", "tenant", "key-id", "at", "kind", "via", "subject", "details"]
        for field, value in zip(fields, row[1:]):
            setattr(event, field, value)
        logged = wc.Record()
        logged.seq = row[0]
        logged.event = event
        return logged

    def _add_key(self, key: wc.Record, hash_: bytes, tenant_limit: int) -> Optional[wc.Variant]:
        """Inserts a key in the open transaction, or returns why not."""
        (n,) = self.db.execute("SELECT count(*) FROM api_keys WHERE tenant = ?", (key.tenant,)).fetchone()
        if n >= tenant_limit:
            return wc.Variant("limit-reached", None)
        self.db.execute(
            f"INSERT INTO api_keys ({self.COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key.id, key.tenant, key.name, ",".join(key.permissions), field(key, "created-at"),
             field(key, "last-used-at"), field(key, "deactivated-at"), field(key, "expires-at"), bytes(hash_)),
        )
        return None

    def _add_events(self, events: list[wc.Record]) -> None:
        for e in events:
            self.db.execute(
                "INSERT INTO key_events (id, tenant, key_id, at, kind, via, subject, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (e.id, e.tenant, field(e, "key-id"), e.at, e.kind, e.via, e.subject, e.details),
            )

    def _atomically(self, f: Any) -> Any:
        """Runs `f` in one IMMEDIATE transaction; a Variant result (an error) rolls it back."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = f()
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            return wc.Variant("conflict", None)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("ROLLBACK" if isinstance(result, wc.Variant) else "COMMIT")
        return result

    # Each method returns the component's `result`. wasmtime-py wraps a value
    # in a Variant only when Python types cannot tell its cases apart.
    # `store-error` is such a variant (`conflict` and `limit-reached` both
    # carry nothing), so errors are Variant("conflict" | "limit-reached" |
    # "unavailable", ...); every `result` around it is then told apart by
    # type, so an ok value stands for itself.
    def insert(self, key: wc.Record, hash_: bytes, tenant_limit: int, event: wc.Record) -> Any:
        def run() -> Any:
            refused = self._add_key(key, hash_, tenant_limit)
            if refused is None:
                self._add_events([event])
            return refused

        return self._atomically(run)

    def find_by_hash(self, hash_: bytes) -> Any:
        row = self.db.execute(f"SELECT {self.COLUMNS} FROM api_keys WHERE key_hash = ?", (bytes(hash_),)).fetchone()
        return self._record(row) if row else None

    def list(self, tenant: str) -> Any:
        rows = self.db.execute(
            f"SELECT {self.COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, rowid", (tenant,)
        ).fetchall()
        return [self._record(r) for r in rows]

    def deactivate(self, tenant: str, id_: str, at: int, event: wc.Record) -> Any:
        def run() -> Any:
            cur = self.db.execute(
                "UPDATE api_keys SET deactivated_at = ? WHERE tenant = ? AND id = ? AND deactivated_at IS NULL",
                (at, tenant, id_),
            )
            if cur.rowcount > 0:
                self._add_events([event])
            return self._find(tenant, id_)

        return self._atomically(run)

    def _find(self, tenant: str, id_: str) -> Any:
        row = self.db.execute(f"SELECT {self.COLUMNS} FROM api_keys WHERE tenant = ? AND id = ?", (tenant, id_)).fetchone()
        return self._record(row) if row else None

    def remove(self, tenant: str, id_: str, event: wc.Record) -> Any:
        def run() -> Any:
            removed = self.db.execute("DELETE FROM api_keys WHERE tenant = ? AND id = ?", (tenant, id_)).rowcount > 0
            if removed:
                self._add_events([event])
            return removed

        return self._atomically(run)

    def roll(self, tenant: str, id_: str, at: int, expires_at: int, key: wc.Record, hash_: bytes,
             tenant_limit: int, events: list[wc.Record]) -> Any:
        def run() -> Any:
            old = self._find(tenant, id_)
            if old is None:
                return None
            gone = field(old, "expires-at")
            if field(old, "deactivated-at") is not None or (gone is not None and gone <= at):
                return wc.Variant("inactive", None)
            refused = self._add_key(key, hash_, tenant_limit)
            if refused is not None:
                return refused
            self.db.execute(
                "UPDATE api_keys SET expires_at = min(coalesce(expires_at, ?), ?) WHERE tenant = ? AND id = ?",
                (expires_at, expires_at, tenant, id_),
            )
            self._add_events(events)
            return self._find(tenant, id_)

        return self._atomically(run)

    def events(self, tenant: str, key_id: Optional[str], before: Optional[int], limit: int) -> Any:
        rows = self.db.execute(
            f"""SELECT {self.EVENT_COLUMNS} FROM key_events
                WHERE tenant = ? AND (? IS NULL OR key_id = ?) AND seq < ? ORDER BY seq DESC LIMIT ?""",
            (tenant, key_id, key_id, before if before is not None else 2**63 - 1, limit),
        ).fetchall()
        return [self._logged(r) for r in rows]

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
                store.add_func("insert", lambda _, key, hash_, limit, event: s.insert(key, hash_, limit, event))
                store.add_func("find-by-hash", lambda _, hash_: s.find_by_hash(hash_))
                store.add_func("list", lambda _, tenant: s.list(tenant))
                store.add_func("deactivate", lambda _, tenant, id_, at, event: s.deactivate(tenant, id_, at, event))
                store.add_func("remove", lambda _, tenant, id_, event: s.remove(tenant, id_, event))
                store.add_func("roll", lambda _, *args: s.roll(*args))
                store.add_func("events", lambda _, tenant, key_id, before, limit: s.events(tenant, key_id, before, limit))
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

    @staticmethod
    def _cli() -> wc.Record:
        """Changes made from here are recorded in the audit trail as `via: cli`."""
        actor = wc.Record()
        actor.via = "cli"
        actor.subject = None
        return actor

    def create(self, tenant: str, name: str, permissions: list[str], expires_at: Optional[int] = None) -> Any:
        return self._call("keys", "create", tenant, name, permissions, expires_at, self._cli())

    def get(self, tenant: str, key_id: str) -> Any:
        return self._call("keys", "get", tenant, key_id)

    def list(self, tenant: str) -> Any:
        return self._call("keys", "list", tenant)

    def roll(self, tenant: str, key_id: str, grace_period_seconds: int = 0) -> Any:
        return self._call("keys", "roll", tenant, key_id, grace_period_seconds, self._cli())

    def deactivate(self, tenant: str, key_id: str) -> Any:
        return self._call("keys", "deactivate", tenant, key_id, self._cli())

    def delete(self, tenant: str, key_id: str) -> None:
        self._call("keys", "delete", tenant, key_id, self._cli())

    def events(self, tenant: str, key_id: Optional[str] = None, cursor: Optional[str] = None, limit: int = 100) -> Any:
        return self._call("keys", "events", tenant, key_id, cursor, limit)

    def verify(self, raw_key: str, permission: str) -> Any:
        return self._call("auth", "verify", raw_key, permission)

    def authorize(self, raw_key: str, method: str, path: str) -> Any:
        return self._call("auth", "authorize", raw_key, method, path)
