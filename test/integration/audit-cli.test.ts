// `vesta audit verify` as an auditor runs it (issue 16): on an embedded database with a ledger, its
// checkpoints in AUDIT_CHECKPOINT_DIR and the audit key ring in AUDIT_KEYS_FILE; intact, then after
// one edited entry, then after the checkpoint file lost its signature.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateSigningRing } from '../../src/auth/signing-keys.js';
import { appendEvents, type LedgerEvent } from '../../src/audit/ledger.js';
import { AuditSequencer } from '../../src/audit/sequencer.js';
import { FileCheckpointSink } from '../../src/audit/checkpoint.js';
import { createLogger } from '../../src/log/logger.js';
import { openDatabase, withTransaction } from '../../src/storage/db.js';
import { migrateLatest } from '../../src/storage/migrate.js';

const dir = mkdtempSync(join(tmpdir(), 'vesta-audit-cli-'));
const dataDir = join(dir, 'data');
const checkpoints = join(dir, 'checkpoints');
const keysFile = join(dir, 'audit-keys.json');
const cli = join(process.cwd(), 'dist/src/cli/vesta.js');
const env = { ...process.env, DATA_DIR: dataDir, DATABASE_URL: '', LOG_LEVEL: 'silent', AUDIT_KEYS_FILE: keysFile, AUDIT_CHECKPOINT_DIR: checkpoints };
const verify = () => spawnSync(process.execPath, [cli, 'audit', 'verify'], { env, encoding: 'utf8', timeout: 120_000 });

function event(i: number): LedgerEvent {
  return {
    resourceType: 'AuditEvent',
    id: `ae-${i}`,
    recorded: new Date(Date.UTC(2026, 11, 5, 12, 0, i % 60)).toISOString(),
    type: { system: 'http://terminology.hl7.org/CodeSystem/audit-event-type', code: 'rest' },
    subtype: [{ system: 'http://hl7.org/fhir/restful-interaction', code: 'read' }],
    action: 'R',
    outcome: '0',
    agent: [{ who: { display: 'client-a' }, requestor: true }],
    source: { observer: { display: 'vesta' } },
    entity: [{ what: { reference: `Patient/p${i}` } }],
  };
}

async function withDb<T>(fn: (db: ReturnType<typeof openDatabase>) => Promise<T>): Promise<T> {
  const db = openDatabase({ dataDir });
  try {
    await migrateLatest(db.knex);
    return await fn(db);
  } finally {
    await db.close();
  }
}

beforeAll(async () => {
  const ring = await generateSigningRing();
  writeFileSync(keysFile, JSON.stringify(ring));
  await withDb(async (db) => {
    for (let b = 0; b < 5; b++) await withTransaction(db.knex, (tx) => appendEvents(tx, Array.from({ length: 100 }, (_, i) => event(b * 100 + i))).then(() => undefined));
    const seq = new AuditSequencer(db.knex, { ledger: 'http://vesta.test', ring, sink: new FileCheckpointSink(checkpoints), intervalMs: 0, checkpointEvery: 200, checkpointMs: 3600_000, log: createLogger('silent') });
    await seq.start();
    await seq.run();
    await seq.flush();
  });
}, 120_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('vesta audit verify', () => {
  test('an intact ledger verifies, with its checkpoints reproduced', () => {
    const r = verify();
    expect([r.status, r.stdout]).toEqual([0, expect.stringContaining('audit ledger intact')]);
    expect(r.stdout).toMatch(/^ledger: 500 entries checked \(positions 0\.\.499\)/m);
    expect(r.stdout).toMatch(/checkpoints \(.*checkpoints\.jws\): 3 found, 3 signed by the audit key ring, 3 reproduced by the chain/);
    expect(r.stderr).toMatch(/500\/500 entries/);
  }, 120_000);

  test('an edited entry is named, and the exit code is 1', async () => {
    await withDb((db) => db.knex.raw(`update audit_ledger set canonical = replace(canonical, '"action":"R"', '"action":"D"') where position = 123`));
    const r = verify();
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/BROKEN at entry 123 \(AuditEvent\/ae-123\): the AuditEvent does not match its digest/);
    await withDb((db) => db.knex.raw(`update audit_ledger set canonical = replace(canonical, '"action":"D"', '"action":"R"') where position = 123`));
    expect(verify().status).toBe(0);
  }, 120_000);

  test('a checkpoint that does not verify is reported', () => {
    const file = join(checkpoints, 'checkpoints.jws');
    const original = readFileSync(file, 'utf8');
    const [first, ...rest] = original.trim().split('\n');
    const [h, p] = first.split('.');
    writeFileSync(file, [`${h}.${p}.${'A'.repeat(86)}`, ...rest].join('\n') + '\n');
    try {
      const r = verify();
      expect(r.status).toBe(1);
      expect(r.stdout).toMatch(/BROKEN checkpoint: checkpoint 1 of 3: signature does not verify/);
    } finally {
      writeFileSync(file, original);
    }
  }, 120_000);
});
