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
