// The audit ledger's write design, measured (issue 16: "do not make every write serialize on the chain
// head: measure, and choose a design"). Writers append one AuditEvent per transaction, optionally with
// some other work in the same transaction (a stand-in for the resource write it audits):
//   unlinked:   append unlinked (Vesta's design); the sequencer links committed entries every 100 ms
//   serialized: take the chain-head lock, read the head, hash, insert the linked entry (the naive design)
// and reads append through the group commit (GroupAppender). Transactions per second and latency
// percentiles at several concurrencies, rounds alternating between the designs.

import { generateSigningRing } from '../src/auth/signing-keys.js';
import { buildAuditEvent } from '../src/audit/balp.js';
import { canonicalBytes, canonicalDigest, GENESIS, linkHash } from '../src/audit/chain.js';
import { MemoryCheckpointSink } from '../src/audit/checkpoint.js';
import { GroupAppender } from '../src/audit/group-append.js';
import { appendEvents } from '../src/audit/ledger.js';
import { AuditSequencer, SEQUENCER_LOCK } from '../src/audit/sequencer.js';
import { createLogger } from '../src/log/logger.js';
import { openDatabase, withTransaction, type Tx } from '../src/storage/db.js';
import { migrateLatest } from '../src/storage/migrate.js';
import { chainHead } from '../src/storage/audit-store.js';
import { median, percentile } from './load.js';

export interface LedgerRun {
  design: 'unlinked' | 'serialized' | 'group (reads)';
  concurrency: number;
  workMs: number;
  txPerSecond: number;
  p50: number;
  p99: number;
  /** unlinked: entries still unlinked when the writers stopped, and ms to link them. */
  backlog?: number;
  catchUpMs?: number;
  /** group: INSERTs per record. */
  insertsPerRecord?: number;
}

export interface LedgerBenchResult {
  seconds: number;
  rounds: number;
  eventBytes: number;
  runs: LedgerRun[];
}

const round1 = (x: number) => Math.round(x * 10) / 10;

function event(i: number) {
  return buildAuditEvent({
    interaction: 'update',
    status: 200,
    recorded: new Date(),
    requestId: `bench-${i}-${Math.random().toString(36).slice(2)}`,
    client: 'bench-client',
    user: 'bench-user',
    fhirUser: 'http://bench/Practitioner/1',
    tokenId: 'bench-jti',
    address: '127.0.0.1',
    server: 'http://bench',
    resources: [{ type: 'Observation', id: `o${i}`, version: '2' }],
    patients: ['p1'],
  });
}

/** Runs `op` from `concurrency` callers for `seconds`; the sorted latencies (ms) and the elapsed seconds. */
async function timedLoop(concurrency: number, seconds: number, op: () => Promise<void>): Promise<{ lat: number[]; secs: number }> {
  const lat: number[] = [];
  const until = Date.now() + seconds * 1000;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < until) {
        const s = process.hrtime.bigint();
        await op();
        lat.push(Number(process.hrtime.bigint() - s) / 1e6);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  return { lat, secs: Number(process.hrtime.bigint() - t0) / 1e9 };
}

async function serializedAppend(tx: Tx, e: ReturnType<typeof event>): Promise<void> {
  await tx.raw('select pg_advisory_xact_lock(?::bigint)', [SEQUENCER_LOCK.toString()]);
  const head = await chainHead(tx);
  const position = head ? head.position + 1 : 0;
  const prev = head?.hash ?? GENESIS;
  const canonical = canonicalBytes(e).toString('utf8');
  const digest = canonicalDigest(canonical);
  await tx.raw('insert into audit_ledger (canonical, digest, position, prev_hash, hash, linked_at) values (?, ?, ?, ?, ?, now())', [canonical, digest, position, prev, linkHash(prev, position, digest)]);
}

export async function ledgerBench(o: { databaseUrl: string; seconds: number; rounds: number; log: (m: string) => void }): Promise<LedgerBenchResult> {
  const db = openDatabase({ databaseUrl: o.databaseUrl, poolMax: 20 });
  const ring = await generateSigningRing();
  const runs: LedgerRun[] = [];
  try {
    await migrateLatest(db.knex);
    const eventBytes = canonicalBytes(event(0)).length;
    let n = 0;
    const once = async (design: 'unlinked' | 'serialized', concurrency: number, workMs: number) => {
      await db.knex.raw('truncate audit_ledger, audit_search');
      const seq = new AuditSequencer(db.knex, { ledger: 'http://bench', ring, sink: new MemoryCheckpointSink(), intervalMs: design === 'unlinked' ? 100 : 0, checkpointEvery: 1000, checkpointMs: 60_000, log: createLogger('silent') });
      await seq.start();
      const { lat, secs } = await timedLoop(concurrency, o.seconds, async () => {
        const e = event(n++);
        await withTransaction(db.knex, async (tx) => {
          if (workMs) await tx.raw('select pg_sleep(?)', [workMs / 1000]);
          if (design === 'unlinked') await appendEvents(tx, [e]);
          else await serializedAppend(tx, e);
        });
      });
      let backlog: number | undefined;
      let catchUpMs: number | undefined;
      if (design === 'unlinked') {
        backlog = Number(((await db.knex.raw('select count(*)::int as n from audit_ledger where position is null')) as { rows: { n: number }[] }).rows[0].n);
        const c = Date.now();
        await seq.stop();
        catchUpMs = Date.now() - c;
      } else await seq.stop();
      return { design, concurrency, workMs, txPerSecond: lat.length / secs, p50: percentile(lat, 50), p99: percentile(lat, 99), ...(backlog !== undefined ? { backlog, catchUpMs } : {}) };
    };
    for (const workMs of [0, 2]) {
      for (const concurrency of [1, 8, 16]) {
        const by: Record<string, Awaited<ReturnType<typeof once>>[]> = { unlinked: [], serialized: [] };
        for (let r = 0; r < o.rounds; r++) {
          for (const design of ['unlinked', 'serialized'] as const) {
            o.log(`bench: ledger ${design} at concurrency ${concurrency}, ${workMs} ms of other work, round ${r + 1}\n`);
            by[design].push(await once(design, concurrency, workMs));
          }
        }
        for (const design of ['unlinked', 'serialized'] as const) {
          const xs = by[design];
          runs.push({
            design,
            concurrency,
            workMs,
            txPerSecond: round1(median(xs.map((x) => x.txPerSecond))),
            p50: round1(median(xs.map((x) => x.p50))),
            p99: round1(median(xs.map((x) => x.p99))),
            ...(design === 'unlinked' ? { backlog: median(xs.map((x) => x.backlog ?? 0)), catchUpMs: median(xs.map((x) => x.catchUpMs ?? 0)) } : {}),
          });
        }
      }
    }
    // Reads: one record per request through the group commit, callers waiting for durability.
    for (const concurrency of [1, 16, 64]) {
      const rates: number[] = [];
      const p50s: number[] = [];
      const p99s: number[] = [];
      const per: number[] = [];
      for (let r = 0; r < o.rounds; r++) {
        o.log(`bench: ledger group append at concurrency ${concurrency}, round ${r + 1}\n`);
        await db.knex.raw('truncate audit_ledger, audit_search');
        const g = new GroupAppender(db.knex, { maxBatch: 500 });
        const { lat, secs } = await timedLoop(concurrency, o.seconds, () => g.append(event(n++)));
        rates.push(lat.length / secs);
        p50s.push(percentile(lat, 50));
        p99s.push(percentile(lat, 99));
        per.push(g.appends / lat.length);
      }
      runs.push({ design: 'group (reads)', concurrency, workMs: 0, txPerSecond: round1(median(rates)), p50: round1(median(p50s)), p99: round1(median(p99s)), insertsPerRecord: Math.round(median(per) * 1000) / 1000 });
    }
    await db.knex.raw('truncate audit_ledger, audit_search');
    return { seconds: o.seconds, rounds: o.rounds, eventBytes, runs };
  } finally {
    await db.close();
  }
}

