// The walkthrough: create, list, verify, authorize, roll, deactivate, verify again.
//   npm run transpile && node example.js [keys.db]
import { load } from './sigma-keys.js';

const { keys, auth } = await load({ db: process.argv[2] ?? ':memory:' });
const created = keys.create('acme', 'Shopify Sync - Production', ['read', 'update-data']);
console.log('created', created.key.id, '- the raw key is shown only once');
console.log('listed', keys.list('acme').map((k) => k.id));
console.log('verify read:', auth.verify(created.rawKey, 'read').keyId);
console.log('authorize PUT /api/v1/records/r1:', auth.authorize(created.rawKey, 'PUT', '/api/v1/records/r1').permission);
const rolled = keys.roll('acme', created.key.id, 60);
console.log('rolled to', rolled.created.key.id, '- the old key works for 60 s more');
keys.deactivate('acme', rolled.created.key.id);
try {
  auth.verify(rolled.created.rawKey, 'read');
} catch (e) {
  console.log('after deactivate:', e.payload.code);
}
console.log('events', keys.events('acme').events.map((e) => e.kind));
