// `vesta load`: bundles, NDJSON and failures, with plain progress lines when not on a terminal.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import request from 'supertest';
import { load } from '../../src/cli/load.js';
import { findPackageRoot } from '../../src/fhir/package-root.js';
import { startTestServer, type TestServer, authed } from '../support/backends.js';

describe('vesta load', () => {
  let t: TestServer;
  let dir: string;
  beforeAll(async () => {
    t = await startTestServer('embedded');
    dir = mkdtempSync(join(tmpdir(), 'vesta-load-'));
  });
  afterAll(async () => {
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('loads a folder of Synthea bundles with bounded concurrency and reports a summary', async () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (d) => (text += d));
    const s = await load([join(findPackageRoot(), 'test', 'fixtures', 'synthea')], { url: t.url, concurrency: 2, ndjsonBatch: 100, out, headers: { Authorization: `Bearer ${t.token}` } });
    expect(s.failures).toEqual([]);
    expect(s.files).toBe(3);
    expect(s.bundles).toBe(3);
    expect(s.resources).toBe(70 + 66 + 71);
    expect(text).toMatch(/^progress: 207\/207 resources/m);
    const p = await authed(t).get('/Patient/_history').expect(200);
    expect(p.body.entry.length).toBe(3);
  });

  test('NDJSON becomes batch Bundles; bad files and failed entries are reported with reasons', async () => {
    const nd = join(dir, 'basics.ndjson');
    writeFileSync(nd, Array.from({ length: 5 }, (_, i) => JSON.stringify({ resourceType: 'Basic', id: `nd-${i}`, code: { text: `n${i}` } })).join('\n') + '\n');
    writeFileSync(join(dir, 'broken.json'), '{ not json');
    writeFileSync(
      join(dir, 'bad-tx.json'),
      JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: [{ resource: { resourceType: 'Basic', id: 'bad id' }, request: { method: 'PUT', url: 'Basic/bad id' } }] }),
    );
    const out = new PassThrough();
    out.resume();
    const s = await load([dir], { url: t.url, concurrency: 1, ndjsonBatch: 2, out, headers: { Authorization: `Bearer ${t.token}` } });
    expect(s.bundles).toBe(4); // 3 NDJSON batches + 1 transaction
    expect(s.resources).toBe(6);
    const reasons = s.failures.map((f) => `${f.source.split('/').pop()}:${f.status}`).sort();
    expect(reasons).toEqual(['bad-tx.json:400', 'broken.json:0']);
    expect(s.failures.find((f) => f.source.endsWith('bad-tx.json'))!.reason).toMatch(/entry 0/);
    await authed(t).get('/Basic/nd-4').expect(200);
  });
});
