// Group commit of audit records (src/audit/group-append.ts): concurrent records share INSERTs, every
// caller's promise resolves only after its record is stored, and a failed append rejects its group.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { GroupAppender } from '../../src/audit/group-append.js';
import type { LedgerEvent } from '../../src/audit/ledger.js';
import { openDatabase, type Database } from '../../src/storage/db.js';
import { migrateLatest } from '../../src/storage/migrate.js';

let db: Database;
const ev = (id: string): LedgerEvent => ({ resourceType: 'AuditEvent', id, recorded: new Date().toISOString(), action: 'R', outcome: '0' });
const count = async () => Number(((await db.knex.raw('select count(*)::int as n from audit_ledger')) as { rows: { n: number }[] }).rows[0].n);

beforeAll(async () => {
  db = openDatabase({ dataDir: ':memory:' });
  await migrateLatest(db.knex);
});
afterAll(async () => {
  await db?.close();
});

describe('group append', () => {
  test('300 concurrent records: all stored when their promises resolve, in far fewer INSERTs', async () => {
    const g = new GroupAppender(db.knex, { maxBatch: 100 });
    let stored = 0;
    await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        g.append(ev(`g-${i}`)).then(async () => {
          // Durable before the caller goes on: the row is there when the promise resolves.
          const r = (await db.knex.raw("select 1 from audit_ledger where (canonical::jsonb) ->> 'id' = ?", [`g-${i}`])) as { rows: unknown[] };
          if (r.rows.length === 1) stored++;
        }),
      ),
    );
    expect(stored).toBe(300);
    expect(await count()).toBe(300);
    expect(g.appends).toBeGreaterThanOrEqual(3);
    expect(g.appends).toBeLessThan(300);
  });

  test('a failing append rejects its whole group; the next group is unaffected', async () => {
    const g = new GroupAppender(db.knex, { maxBatch: 100 });
    const before = await count();
    // The first record goes alone (nothing was waiting); the three behind it form the next group.
    // g-0 exists already: that group (with two new records) fails as a whole and stores nothing.
    const first = g.append(ev('block-1'));
    const results = await Promise.allSettled([g.append(ev('g-0')), g.append(ev('fresh-1')), g.append(ev('fresh-2'))]);
    await first;
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(await count()).toBe(before + 1);
    await g.append(ev('fresh-3'));
    expect(await count()).toBe(before + 2);
  });
});
