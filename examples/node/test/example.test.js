// The Node walkthrough, step by step, against a real SQLite file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { load } from '../sigma-keys.js';

const code = (f) => {
  try {
    f();
  } catch (e) {
    return e.payload?.code;
  }
  return 'no error';
};

test('the key lifecycle through the component', async () => {
  const path = join(mkdtempSync(join(tmpdir(), 'sigma-keys-')), 'keys.db');
  const { keys, auth, db } = await load({ db: path });

  const created = keys.create('acme', ' Shopify Sync ', ['update-data', 'read']);
  assert.match(created.rawKey, /^sigma_sk_live_[0-9a-z]{36}$/);
  assert.equal(created.key.name, 'Shopify Sync');
  assert.deepEqual(created.key.permissions, ['read', 'update-data']);

  assert.deepEqual(keys.list('acme').map((k) => k.id), [created.key.id]);
  assert.deepEqual(keys.list('globex'), []);

  const verified = auth.verify(created.rawKey, 'update-data');
  assert.equal(verified.keyId, created.key.id);
  assert.equal(verified.tenant, 'acme');
  assert.equal(code(() => auth.verify(created.rawKey, 'delete-model')), 'insufficient-permission');

  assert.equal(auth.authorize(created.rawKey, 'PUT', '/api/v1/records/r1/variants/v1').permission, 'update-data');
  assert.equal(code(() => auth.authorize(created.rawKey, 'GET', '/api/v1/widgets')), 'unknown-resource');
  assert.equal(auth.requiredPermission('DELETE', '/api/v1/schemas/s1'), 'delete-model');
  assert.ok(keys.list('acme')[0].lastUsedAt !== undefined);

  const off = keys.deactivate('acme', created.key.id);
  assert.ok(off.deactivatedAt !== undefined);
  assert.equal(code(() => auth.verify(created.rawKey, 'read')), 'api-key-deactivated');

  assert.equal(code(() => keys.delete('globex', created.key.id)), 'not-found');
  keys.delete('acme', created.key.id);
  assert.deepEqual(keys.list('acme'), []);

  db.pragma('wal_checkpoint(FULL)');
  assert.ok(!readFileSync(path).includes(created.rawKey), 'the raw key is never stored');
});

test('bad input is refused and changes nothing', async () => {
  const { keys, auth } = await load({ db: ':memory:' });
  assert.equal(code(() => keys.create('acme', '', ['read'])), 'invalid-request');
  assert.equal(code(() => keys.create('acme', 'ok', [])), 'invalid-request');
  assert.equal(code(() => keys.create('acme', 'ok', ['read', 'read'])), 'invalid-request');
  assert.equal(code(() => auth.verify('sigma_sk_live_nope', 'read')), 'invalid-api-key');
  assert.deepEqual(keys.list('acme'), []);
});

test('expiry, rolling with a grace period, and the audit trail', async () => {
  const { keys, auth } = await load({ db: ':memory:' });
  const soon = BigInt(Date.now() + 60_000);
  const created = keys.create('acme', 'sync', ['read'], { expiresAt: soon });
  assert.equal(created.key.expiresAt, soon);
  assert.equal(code(() => keys.create('acme', 'late', ['read'], { expiresAt: 1n })), 'invalid-request');

  const rolled = keys.roll('acme', created.key.id, 30);
  assert.equal(rolled.created.key.name, 'sync');
  assert.equal(rolled.created.key.expiresAt, soon);
  assert.ok(rolled.previous.expiresAt <= BigInt(Date.now() + 30_000));
  assert.equal(auth.verify(created.rawKey, 'read').keyId, created.key.id, 'the old key works during the grace');
  assert.equal(auth.verify(rolled.created.rawKey, 'read').keyId, rolled.created.key.id);

  const last = keys.roll('acme', rolled.created.key.id);
  assert.equal(code(() => auth.verify(rolled.created.rawKey, 'read')), 'api-key-expired');
  assert.equal(code(() => keys.roll('acme', rolled.created.key.id)), 'api-key-inactive');
  assert.equal(keys.get('acme', rolled.created.key.id).active, false);
  assert.equal(keys.get('acme', last.created.key.id).active, true);

  const page = keys.events('acme', { limit: 3 });
  assert.deepEqual(page.events.map((e) => e.kind), ['rolled', 'created', 'rolled']);
  assert.deepEqual(page.events[0].actor, { via: 'cli', subject: undefined });
  assert.equal(page.events[0].details.tag, 'rolled');
  assert.equal(page.events[0].details.val.newKeyId, last.created.key.id);
  const rest = keys.events('acme', { cursor: page.next });
  assert.deepEqual(rest.events.map((e) => e.kind), ['created', 'created']);
  assert.equal(rest.next, undefined);
  assert.deepEqual(keys.events('globex').events, []);
});
