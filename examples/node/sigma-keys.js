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

const COLUMNS = 'id, tenant, name, permissions, created_at, last_used_at, deactivated_at';

/** `sigma:api-keys/store` over SQLite. Errors are thrown as the WIT `store-error`. */
export function sqliteStore(path) {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(`CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,
    key_hash BLOB NOT NULL UNIQUE, permissions TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_used_at INTEGER, deactivated_at INTEGER)`);
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
    };
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
  return {
    db,
    insert: guard((key, hash, tenantLimit) => {
      // Count and insert in one transaction, so the limit holds under concurrency.
      const insert = db.transaction(() => {
        const { n } = db.prepare('SELECT count(*) AS n FROM api_keys WHERE tenant = ?').get(key.tenant);
        if (n >= BigInt(tenantLimit)) throw { payload: { tag: 'limit-reached' } };
        db.prepare('INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)').run(
          key.id, key.tenant, key.name, Buffer.from(hash), key.permissions.join(','),
          key.createdAt, key.lastUsedAt ?? null, key.deactivatedAt ?? null);
      });
      try {
        insert.immediate();
      } catch (e) {
        if (e.code?.startsWith('SQLITE_CONSTRAINT')) throw { payload: { tag: 'conflict' } };
        throw e;
      }
    }),
    findByHash: guard((hash) => record(byHash.get(Buffer.from(hash)))),
    list: guard((tenant) => byTenant.all(tenant).map(record)),
    deactivate: guard((tenant, id, at) => {
      db.prepare('UPDATE api_keys SET deactivated_at = ? WHERE tenant = ? AND id = ? AND deactivated_at IS NULL')
        .run(at, tenant, id);
      return record(byId.get(tenant, id));
    }),
    remove: guard((tenant, id) => db.prepare('DELETE FROM api_keys WHERE tenant = ? AND id = ?').run(tenant, id).changes > 0),
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
  return { keys: component.keys, auth: component.auth, db: store.db };
}
