// `vesta audit verify` (issue 16): recomputes every entry's digest from its stored AuditEvent and the
// chain of hashes in position order, checks every checkpoint's signature and that the chain
// reproduces its head at its size, and reports the not-yet-linked window. It stops at the first
// broken entry and names it and what differs.
import type { JSONWebKeySet } from 'jose';
import type { Queryable } from '../storage/db.js';
import { hashAt, linkedFrom, unlinkedSummary } from '../storage/audit-store.js';
import { canonicalDigest, GENESIS, linkHash } from './chain.js';
import { checkCheckpoint, type CheckpointPayload, type CheckpointSink } from './checkpoint.js';

export interface VerifyOptions {
  /** First position to check (default 0); a later start trusts the stored hash just before it. */
  from?: number;
  /** Last position to check (default: the end of the chain). */
  to?: number;
  sink: CheckpointSink;
  keys: JSONWebKeySet;
  /** Unlinked entries older than this fail verification (the sequencer's window), ms. */
  maxUnlinkedAgeMs: number;
  onProgress?: (checked: number, position: number) => void;
  batch?: number;
  clock?: () => Date;
}

export interface Break {
  position: number;
  /** The stored row's event id (absent when the entry is missing). */
  eventId?: string;
  problem: string;
}

export interface VerifyReport {
  ok: boolean;
  checked: number;
  /** Positions covered: from .. last. */
  from: number;
  last: number;
  firstBreak?: Break;
  checkpoints: { total: number; valid: number; matched: number; problems: string[] };
  unlinked: { count: number; oldestAgeMs: number | undefined; problem?: string };
  seconds: number;
}

const hex = (b: Buffer | undefined) => (b ? b.toString('hex') : 'none');

/** The AuditEvent id in a stored entry, for the report (parsed only for a broken entry). */
function idOf(canonical: string): string | undefined {
  try {
    const id = (JSON.parse(canonical) as { id?: unknown }).id;
    return typeof id === 'string' ? id : undefined;
  } catch {
    return undefined;
  }
}

export async function verifyLedger(q: Queryable, o: VerifyOptions): Promise<VerifyReport> {
  const started = process.hrtime.bigint();
  const clock = o.clock ?? (() => new Date());
  const from = o.from ?? 0;
  const batch = o.batch ?? 5000;
  // Checkpoints first: which heads must the chain reproduce, at which sizes.
  const lines = await o.sink.list();
  const checkpoints: CheckpointPayload[] = [];
  const cpProblems: string[] = [];
  for (const [i, line] of lines.entries()) {
    const c = await checkCheckpoint(line, o.keys);
    if (c.ok) checkpoints.push(c.payload);
    else cpProblems.push(`checkpoint ${i + 1} of ${lines.length}: ${c.reason}`);
  }
  const bySize = new Map<number, CheckpointPayload[]>();
  for (const c of checkpoints) bySize.set(c.size, [...(bySize.get(c.size) ?? []), c]);
  let matched = 0;

  let prev: Buffer;
  if (from === 0) prev = GENESIS;
  else {
    const h = await hashAt(q, from - 1);
    if (!h) {
      return finish({ position: from - 1, problem: `no linked entry at position ${from - 1} to start from` }, 0, from - 1);
    }
    prev = h;
  }
  let expected = from;
  let checked = 0;
  let firstBreak: Break | undefined;
  // The hash before `prev` (for naming an inserted entry), unknown at a partial start.
  let prevPrev: Buffer | undefined = from === 0 ? undefined : from >= 2 ? await hashAt(q, from - 2) : GENESIS;
  // The next batch is read while this one is hashed.
  let next = linkedFrom(q, expected, batch, o.to);
  scan: for (;;) {
    const rows = await next;
    if (rows.length === batch) next = linkedFrom(q, rows[rows.length - 1].position + 1, batch, o.to);
    for (const r of rows) {
      if (r.position !== expected) {
        firstBreak = { position: expected, problem: `entry ${expected} is missing: the next stored entry has position ${r.position} (deleted, or positions rewritten)` };
        break scan;
      }
      const digest = canonicalDigest(r.canonical);
      if (!digest.equals(r.digest)) {
        firstBreak = { position: r.position, eventId: idOf(r.canonical), problem: `the AuditEvent does not match its digest (stored ${hex(r.digest)}, computed ${hex(digest)}): its content was changed` };
        break scan;
      }
      if (!r.prevHash || !r.prevHash.equals(prev)) {
        // An entry that is consistent with the position before its own, after the entry before it:
        // the entry before it was inserted (it carries a forged but well-formed link).
        const shifted = prevPrev !== undefined && r.prevHash?.equals(prevPrev) && r.hash?.equals(linkHash(prevPrev, r.position - 1, digest));
        firstBreak = shifted
          ? { position: r.position - 1, problem: `entry ${r.position - 1} was inserted: the entry after it still links to entry ${r.position - 2} as if it stood at position ${r.position - 1}` }
          : { position: r.position, eventId: idOf(r.canonical), problem: `its previous-hash is ${hex(r.prevHash)} but entry ${r.position - 1} hashes to ${hex(prev)}: an entry before it was changed, removed or inserted` };
        break scan;
      }
      const hash = linkHash(prev, r.position, digest);
      if (!r.hash || !r.hash.equals(hash)) {
        firstBreak = { position: r.position, eventId: idOf(r.canonical), problem: `its hash is ${hex(r.hash)} but recomputes to ${hex(hash)}` };
        break scan;
      }
      for (const c of bySize.get(r.position + 1) ?? []) {
        if (c.head !== hash.toString('hex')) {
          firstBreak = { position: r.position, eventId: idOf(r.canonical), problem: `the chain does not reproduce the checkpoint of ${c.time} (size ${c.size}): head ${c.head}, chain ${hash.toString('hex')}; the chain was rewritten` };
          break scan;
        }
        matched++;
      }
      prevPrev = prev;
      prev = hash;
      expected++;
      checked++;
    }
    o.onProgress?.(checked, expected - 1);
    if (rows.length < batch) break;
  }
  await next.catch(() => undefined);
  const last = expected - 1;
  if (!firstBreak && o.to === undefined) {
    // Truncation: a checkpoint covers more entries than the chain holds.
    const beyond = checkpoints.filter((c) => c.size > last + 1).sort((a, b) => a.size - b.size)[0];
    if (beyond) firstBreak = { position: last + 1, problem: `the chain ends at entry ${last} but the checkpoint of ${beyond.time} covers ${beyond.size} entries: entries were removed from the end` };
  }
  return finish(firstBreak, checked, last);

  async function finish(brk: Break | undefined, n: number, lastPos: number): Promise<VerifyReport> {
    const u = await unlinkedSummary(q);
    const age = u.oldest ? clock().getTime() - u.oldest.getTime() : undefined;
    const unlinkedProblem = age !== undefined && age > o.maxUnlinkedAgeMs ? `${u.count} entries are not linked, the oldest for ${Math.round(age / 1000)} s (limit ${Math.round(o.maxUnlinkedAgeMs / 1000)} s): the sequencer is not running, or entries were inserted behind it` : undefined;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return {
      ok: !brk && !cpProblems.length && !unlinkedProblem,
      checked: n,
      from,
      last: lastPos,
      ...(brk ? { firstBreak: brk } : {}),
      checkpoints: { total: lines.length, valid: checkpoints.length, matched, problems: cpProblems },
      unlinked: { count: u.count, oldestAgeMs: age, ...(unlinkedProblem ? { problem: unlinkedProblem } : {}) },
      seconds,
    };
  }
}
