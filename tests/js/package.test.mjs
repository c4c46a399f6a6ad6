// A plain Node app depends on the web SDK's folder (src/parley/static, its package.json)
// and imports it by package name, as a bundler app or React Native would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, symlinkSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const folder = fileURLToPath(new URL('../../src/parley/static/', import.meta.url));

test('package.json names the SDK and exports its entry points', () => {
  const pkg = JSON.parse(readFileSync(join(folder, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'parley-client');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.exports['.'], './parley.js');
  assert.ok(pkg.exports['./protocol'] && pkg.exports['./storage']);
});

test('a plain Node app imports the SDK from the folder by package name', () => {
  const app = mkdtempSync(join(tmpdir(), 'parley-app-'));
  try {
    mkdirSync(join(app, 'node_modules'));
    symlinkSync(folder, join(app, 'node_modules', 'parley-client'), 'dir');
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', type: 'module', dependencies: { 'parley-client': 'file:../static' } }));
    writeFileSync(join(app, 'main.js'), `
      import ParleyClient, { ChatWebSocket, chatReducer, selectors, EventName, ErrorCode, memoryStorage } from 'parley-client';
      import { RECEIPT_BATCH } from 'parley-client/protocol';
      import { indexedDBStorage } from 'parley-client/storage';
      const storage = {               // AsyncStorage's shape: promises
        m: new Map(),
        async getItem(k) { return this.m.has(k) ? this.m.get(k) : null; },
        async setItem(k, v) { this.m.set(k, v); },
      };
      const client = new ParleyClient({ token: 't', url: 'ws://127.0.0.1:9/ws', storage, network: null, userId: 'u' });
      await client.ready;
      const localId = client.sendMessage('1', 'queued while offline');
      await client.queue.flush();
      const again = new ParleyClient({ token: 't', url: 'ws://127.0.0.1:9/ws', storage, network: null, userId: 'u' });
      await again.ready;
      console.log(JSON.stringify({
        client: typeof ParleyClient, socket: typeof ChatWebSocket, reducer: typeof chatReducer,
        selectors: typeof selectors.messages, event: EventName.CHAT_MESSAGE, code: ErrorCode.RATE_LIMITED,
        batch: RECEIPT_BATCH, idb: typeof indexedDBStorage, mem: typeof memoryStorage,
        restored: again.state.messages.byId[localId]?.status ?? null,
      }));
      client.destroy(); again.destroy();
    `);
    const out = execFileSync(process.execPath, [join(app, 'main.js')], { cwd: app, encoding: 'utf8' });
    assert.deepEqual(JSON.parse(out.trim()), {
      client: 'function', socket: 'function', reducer: 'function', selectors: 'function',
      event: 'chat_message', code: 'RATE_LIMITED', batch: 200, idb: 'function', mem: 'function',
      restored: 'sending',
    });
  } finally {
    rmSync(app, { recursive: true, force: true });
  }
});
