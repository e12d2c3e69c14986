// The sigma-keys component in Node.js. `npm run transpile` turns the component
// into gen/sigma_keys.js with jco (instantiation mode, so we pass the imports);
// this file supplies them: `sigma:api-keys/store` over better-sqlite3,
// `sigma:api-keys/request-log`, `wasi:config/store`, and WASI from
// @bytecodealliance/preview2-shim.

import { readFile } from 'node:fs/promises';
import Database from 'better-sqlite3';
import * as cli from '@bytecodealliance/preview2-shim/cli';
import * as clocks from '@bytecodealliance/preview2-shim/clocks';
import * as http from '@bytecodealliance/preview2-shim/http';
import * as io from '@bytecodealliance/preview2-shim/io';
import * as random from '@bytecodealliance/preview2-shim/random';
import { instantiate } from './gen/sigma_keys.js';

const COLUMNS = 'id, tenant, name, permissions, created_at, last_used_at, deactivated_at, expires_at';
const EVENT_COLUMNS = 'seq, id, tenant, key_id, at, kind, via, subject, details';

/** `sigma:api-keys/store` over SQLite. Errors are thrown as the WIT `store-error`. */
export function sqliteStore(path) {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(`CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,
    key_hash BLOB NOT NULL UNIQUE, permissions TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_used_at INTEGER, deactivated_at INTEGER,
    expires_at INTEGER)`);
  db.exec(`CREATE TABLE IF NOT EXISTS key_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL, key_id TEXT NOT NULL, at INTEGER NOT NULL,
    kind TEXT NOT NULL, via TEXT NOT NULL, subject TEXT, details TEXT NOT NULL)`);
  db.defaultSafeIntegers(true); // u64 timestamps stay BigInt both ways
  const record = (row) =>
    row && {
      id: row.id,
      tenant: row.tenant,
      name: row.name,
      permissions: row.permissions.split(',').filter(Boolean),
      createdAt: row.created_at,
      lastUsedAt: row.last_used_at ?? undefined,
      deactivatedAt: row.deactivated_at ?? undefined,
      expiresAt: row.expires_at ?? undefined,
    };
  const logged = (row) => ({
    seq: row.seq,
    event: {
      id: row.id,
      tenant: row.tenant,
      keyId: row.key_id,
      at: row.at,
      kind: row.kind,
      via: row.via,
      subject: row.subject ?? undefined,
      details: row.details,
    },
  });
  const unavailable = (e) => ({ payload: { tag: 'unavailable', val: String(e.message) } });
  const guard = (f) => (...args) => {
    try {
      return f(...args);
    } catch (e) {
      if (e?.payload) throw e;
      throw unavailable(e);
    }
  };
  const byHash = db.prepare(`SELECT ${COLUMNS} FROM api_keys WHERE key_hash = ?`);
  const byTenant = db.prepare(`SELECT ${COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, rowid`);
  const byId = db.prepare(`SELECT ${COLUMNS} FROM api_keys WHERE tenant = ? AND id = ?`);
  const addEvents = (events) => {
    const insert = db.prepare('INSERT INTO key_events (id, tenant, key_id, at, kind, via, subject, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
    for (const e of events) insert.run(e.id, e.tenant, e.keyId, e.at, e.kind, e.via, e.subject ?? null, e.details);
  };
  // Count and insert in the caller's transaction, so the limit holds under concurrency.
  const addKey = (key, hash, tenantLimit) => {
    const { n } = db.prepare('SELECT count(*) AS n FROM api_keys WHERE tenant = ?').get(key.tenant);
    if (n >= BigInt(tenantLimit)) throw { payload: { tag: 'limit-reached' } };
    db.prepare(`INSERT INTO api_keys (${COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
      key.id, key.tenant, key.name, key.permissions.join(','), key.createdAt,
      key.lastUsedAt ?? null, key.deactivatedAt ?? null, key.expiresAt ?? null, Buffer.from(hash));
  };
  // Runs `f` in one IMMEDIATE transaction; a constraint failure is the WIT `conflict`.
  const atomically = (f) => (...args) => {
    try {
      return db.transaction(f).immediate(...args);
    } catch (e) {
      if (e.code?.startsWith('SQLITE_CONSTRAINT')) throw { payload: { tag: 'conflict' } };
      throw e;
    }
  };
  return {
    db,
    insert: guard(atomically((key, hash, tenantLimit, event) => {
      addKey(key, hash, tenantLimit);
      addEvents([event]);
    })),
    findByHash: guard((hash) => record(byHash.get(Buffer.from(hash)))),
    list: guard((tenant) => byTenant.all(tenant).map(record)),
    deactivate: guard(atomically((tenant, id, at, event) => {
      const { changes } = db.prepare('UPDATE api_keys SET deactivated_at = ? WHERE tenant = ? AND id = ? AND deactivated_at IS NULL')
        .run(at, tenant, id);
      if (changes > 0) addEvents([event]);
      return record(byId.get(tenant, id));
    })),
    remove: guard(atomically((tenant, id, event) => {
      const removed = db.prepare('DELETE FROM api_keys WHERE tenant = ? AND id = ?').run(tenant, id).changes > 0;
      if (removed) addEvents([event]);
      return removed;
    })),
    roll: guard(atomically((tenant, id, at, expiresAt, key, hash, tenantLimit, events) => {
      const old = byId.get(tenant, id);
      if (!old) return undefined;
      if (old.deactivated_at != null || (old.expires_at != null && old.expires_at <= at)) {
        throw { payload: { tag: 'inactive' } };
      }
      addKey(key, hash, tenantLimit);
      db.prepare('UPDATE api_keys SET expires_at = min(coalesce(expires_at, ?), ?) WHERE tenant = ? AND id = ?')
        .run(expiresAt, expiresAt, tenant, id);
      addEvents(events);
      return record(byId.get(tenant, id));
    })),
    events: guard((tenant, keyId, before, limit) =>
      db.prepare(`SELECT ${EVENT_COLUMNS} FROM key_events
        WHERE tenant = ? AND (? IS NULL OR key_id = ?) AND seq < ? ORDER BY seq DESC LIMIT ?`)
        .all(tenant, keyId ?? null, keyId ?? null, before ?? 2n ** 63n - 1n, limit)
        .map(logged)),
    recordUse: guard((id, at) => {
      db.prepare('UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)')
        .run(at, id, at);
    }),
  };
}

/** Loads the component with a SQLite store and optional config (`jwt-secret`, `upstream`). */
export async function load({ db, config = {} }) {
  const store = sqliteStore(db);
  const { db: _handle, ...storeImports } = store;
  const imports = {
    'sigma:api-keys/store': storeImports,
    'sigma:api-keys/request-log': { identify() {} },
    'wasi:config/store': {
      get: (key) => config[key],
      getAll: () => Object.entries(config),
    },
    'wasi:cli/environment': cli.environment,
    'wasi:cli/exit': cli.exit,
    'wasi:cli/stderr': cli.stderr,
    'wasi:cli/stdin': cli.stdin,
    'wasi:cli/stdout': cli.stdout,
    'wasi:cli/terminal-input': cli.terminalInput,
    'wasi:cli/terminal-output': cli.terminalOutput,
    'wasi:cli/terminal-stderr': cli.terminalStderr,
    'wasi:cli/terminal-stdin': cli.terminalStdin,
    'wasi:cli/terminal-stdout': cli.terminalStdout,
    'wasi:clocks/monotonic-clock': clocks.monotonicClock,
    'wasi:clocks/wall-clock': clocks.wallClock,
    'wasi:http/outgoing-handler': http.outgoingHandler,
    'wasi:http/types': http.types,
    'wasi:io/error': io.error,
    'wasi:io/poll': io.poll,
    'wasi:io/streams': io.streams,
    'wasi:random/insecure-seed': random.insecureSeed,
    'wasi:random/random': random.random,
  };
  const getCoreModule = async (name) => WebAssembly.compile(await readFile(new URL(`./gen/${name}`, import.meta.url)));
  const component = await instantiate(getCoreModule, imports);
  return { keys: asCli(component.keys), auth: component.auth, db: store.db };
}

/** Changes made from here are recorded in the audit trail as `via: cli`. */
const CLI = { via: 'cli', subject: undefined };

/** The typed `keys` interface, with the actor filled in and optional arguments last. */
function asCli(keys) {
  return {
    list: (tenant) => keys.list(tenant),
    get: (tenant, id) => keys.get(tenant, id),
    create: (tenant, name, permissions, { expiresAt } = {}) => keys.create(tenant, name, permissions, expiresAt, CLI),
    roll: (tenant, id, gracePeriodSeconds = 0) => keys.roll(tenant, id, gracePeriodSeconds, CLI),
    deactivate: (tenant, id) => keys.deactivate(tenant, id, CLI),
    delete: (tenant, id) => keys.delete(tenant, id, CLI),
    events: (tenant, { keyId, cursor, limit = 100 } = {}) => keys.events(tenant, keyId, cursor, limit),
  };
}
