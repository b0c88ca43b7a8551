// Registry sync state in the database (issue 17, migrations 0013 and 0014) on both backends: the watermark
// only moves forward by compare-and-set, one of many concurrent claims of a schedule window wins,
// counters add up under concurrency, one worker holds a run, the breaker opens once and lets one prober through, records reach the dead-letter list once, and unmatched pulled
// Immunizations are listed for review once while open. Each test uses registry ids of its own.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { Database } from '../../src/storage/db.js';
import { migrateLatest } from '../../src/storage/migrate.js';
import {
  addReview,
  advanceWatermark,
  getRecord,
  getState,
  listDeadLetters,
  listReviews,
  listStates,
  pruneRuns,
  recordOutcome,
  resolveReview,
  stripOutcome,
  tryClaimRun,
  upsertState,
  tryLeaseRun,
  releaseRun,
  getBreaker,
  listBreakers,
  breakerFailure,
  breakerSuccess,
  breakerTryProbe,
  type RecordKey,
} from '../../src/storage/registry-store.js';
import { backends, openTestDatabase } from '../support/backends.js';
import { prng } from '../support/prng.js';

const T0 = new Date('2025-03-01T12:00:00.000Z');
const at = (ms: number) => new Date(T0.getTime() + ms);
const ZERO = { sent: 0, stored: 0, rejected: 0, retried: 0, deadLettered: 0, unmatched: 0, skipped: 0 };

describe.each(backends())('registry store (%s)', (backend) => {
  let db: Database;
  let drop: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    ({ db, drop } = await openTestDatabase(backend));
    await migrateLatest(db.knex);
  }, 120_000);

  afterAll(async () => {
    await db?.close();
    await drop?.();
  });

  test('state: created on first change with zero counts and no lease; set fields change, others stay', async () => {
    const q = db.knex;
    expect(await getState(q, 'st', 'push')).toBeUndefined();
    const started = await upsertState(q, 'st', 'push', { lastRunStarted: at(0), lastOutcome: 'running' });
    expect(started).toEqual({
      registryId: 'st',
      direction: 'push',
      watermark: null,
      lastRunStarted: at(0),
      lastRunFinished: null,
      lastOutcome: 'running',
      lastError: null,
      counts: ZERO,
      runHolder: null,
      runLeaseUntil: null,
    });
    await upsertState(q, 'st', 'push', { lastRunFinished: at(5000), lastOutcome: 'failed', lastError: 'registry answered 503', counts: { retried: 4 } });
    const failed = await getState(q, 'st', 'push');
    expect(failed).toEqual({ ...started, lastRunFinished: at(5000), lastOutcome: 'failed', lastError: 'registry answered 503', counts: { ...ZERO, retried: 4 } });
    // null clears, absent keeps; an empty patch changes nothing and still answers the state.
    const cleared = await upsertState(q, 'st', 'push', { lastError: null });
    expect(cleared).toEqual({ ...failed, lastError: null });
    expect(await upsertState(q, 'st', 'push', {})).toEqual(cleared);
    await upsertState(q, 'st', 'pull', { lastOutcome: 'completed' });
    expect((await listStates(q)).filter((s) => s.registryId === 'st').map((s) => [s.direction, s.lastOutcome])).toEqual([
      ['pull', 'completed'],
      ['push', 'failed'],
    ]);
    await expect(upsertState(q, 'st', 'push', { counts: { sent: -1 } })).rejects.toThrow(TypeError);
    await expect(upsertState(q, 'st', 'push', { counts: { bogus: 1 } as never })).rejects.toThrow(TypeError);
  });

  test('counters add up when many workers add at once (the first adds create the row)', async () => {
    const q = db.knex;
    const adds = Array.from({ length: 40 }, (_, i) => upsertState(q, 'counters', 'pull', { counts: i % 2 ? { stored: 1, skipped: 2 } : { stored: 1, unmatched: 1, deadLettered: 3 } }));
    const results = await Promise.all(adds);
    expect(await getState(q, 'counters', 'pull')).toMatchObject({ counts: { ...ZERO, stored: 40, skipped: 40, unmatched: 20, deadLettered: 60 } });
    // Each caller saw the row right after its own addition: 40 distinct totals 1..40.
    expect(results.map((r) => r.counts.stored).sort((a, b) => a - b)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
  });

  test('run lease: one of many concurrent takers wins; the holder renews; an expired lease is taken over; release frees it', async () => {
    const q = db.knex;
    const soon = new Date(Date.now() + 60_000);
    const race = await Promise.all(Array.from({ length: 8 }, (_, i) => tryLeaseRun(q, 'lease', 'push', `w${i}`, soon)));
    const winners = race.map((won, i) => (won ? `w${i}` : '')).filter(Boolean);
    expect(winners).toHaveLength(1);
    const holder = winners[0];
    const other = holder === 'w0' ? 'w1' : 'w0';
    expect(await tryLeaseRun(q, 'lease', 'push', other, soon)).toBe(false);
    expect(await tryLeaseRun(q, 'lease', 'push', holder, new Date(Date.now() + 90_000))).toBe(true);
    // The other direction is a lease of its own.
    expect(await tryLeaseRun(q, 'lease', 'pull', other, soon)).toBe(true);
    // Someone else's release changes nothing.
    await releaseRun(q, 'lease', 'push', other);
    expect((await getState(q, 'lease', 'push'))?.runHolder).toBe(holder);
    await releaseRun(q, 'lease', 'push', holder);
    expect(await getState(q, 'lease', 'push')).toMatchObject({ runHolder: null, runLeaseUntil: null });
    expect(await tryLeaseRun(q, 'lease', 'push', other, new Date(Date.now() - 1000))).toBe(true);
    // A lease that ran out (its worker was killed) goes to the next taker.
    expect(await tryLeaseRun(q, 'lease', 'push', holder, soon)).toBe(true);
    expect((await getState(q, 'lease', 'push'))?.runHolder).toBe(holder);
  });

  test('breaker: opens at the threshold of consecutive failures, once; a success closes it; one prober after the cool-down', async () => {
    const q = db.knex;
    expect(await getBreaker(q, 'br')).toMatchObject({ state: 'closed', consecutiveFailures: 0, openedAt: null });
    expect(await breakerSuccess(q, 'br', at(0))).toBe(false);
    for (let i = 1; i <= 2; i++) expect(await breakerFailure(q, 'br', 3, 'registry answered 503', at(i))).toMatchObject({ state: 'closed', consecutiveFailures: i, openedNow: false });
    // A success between failures starts the count again.
    expect(await breakerSuccess(q, 'br', at(3))).toBe(true);
    expect(await getBreaker(q, 'br')).toMatchObject({ state: 'closed', consecutiveFailures: 0 });
    // Concurrent failures from several workers: exactly one opens it.
    const race = await Promise.all(Array.from({ length: 6 }, (_, i) => breakerFailure(q, 'br', 3, `timeout ${i}`, at(10 + i))));
    expect(race.filter((r) => r.openedNow)).toHaveLength(1);
    const open = await getBreaker(q, 'br');
    expect(open).toMatchObject({ state: 'open', consecutiveFailures: 6 });
    expect(open.openedAt).toEqual(race.find((r) => r.openedNow)!.openedAt);
    // Before the cool-down no probe; after it exactly one caller of many.
    const opened = open.openedAt!.getTime();
    expect(await breakerTryProbe(q, 'br', 60, new Date(opened + 59_000))).toBe(false);
    const probes = await Promise.all(Array.from({ length: 5 }, () => breakerTryProbe(q, 'br', 60, new Date(opened + 61_000))));
    expect(probes.filter(Boolean)).toHaveLength(1);
    expect(await getBreaker(q, 'br')).toMatchObject({ state: 'half-open' });
    // The probe fails: open again at once, whatever the threshold, with a new cool-down.
    const reopened = await breakerFailure(q, 'br', 1000, 'registry answered 502', new Date(opened + 62_000));
    expect(reopened).toMatchObject({ state: 'open', openedNow: true, openedAt: new Date(opened + 62_000), lastFailure: 'registry answered 502' });
    expect(await breakerTryProbe(q, 'br', 60, new Date(opened + 100_000))).toBe(false);
    // A probe whose worker died is taken over a cool-down later.
    expect(await breakerTryProbe(q, 'br', 60, new Date(opened + 123_000))).toBe(true);
    expect(await breakerTryProbe(q, 'br', 60, new Date(opened + 124_000))).toBe(false);
    expect(await breakerTryProbe(q, 'br', 60, new Date(opened + 184_000))).toBe(true);
    // The probe succeeds: closed.
    expect(await breakerSuccess(q, 'br', new Date(opened + 185_000))).toBe(true);
    expect(await getBreaker(q, 'br')).toMatchObject({ state: 'closed', consecutiveFailures: 0, openedAt: null, probeStartedAt: null });
    expect((await listBreakers(q)).map((b) => b.registryId)).toContain('br');
    // A threshold of 1 opens on the first failure of a new registry.
    expect(await breakerFailure(q, 'br1', 1, 'network error', at(0))).toMatchObject({ state: 'open', openedNow: true });
  });

  test('watermark: compare-and-set, only forward; of concurrent moves from one value exactly one wins', async () => {
    const q = db.knex;
    // Expecting a value when none is stored fails and creates nothing.
    expect(await advanceWatermark(q, 'wm', 'pull', at(0), at(1))).toEqual({ advanced: false, watermark: null });
    expect(await getState(q, 'wm', 'pull')).toBeUndefined();
    expect(await advanceWatermark(q, 'wm', 'pull', null, at(1000))).toEqual({ advanced: true, watermark: at(1000) });
    expect(await advanceWatermark(q, 'wm', 'pull', null, at(2000))).toEqual({ advanced: false, watermark: at(1000) });
    expect(await advanceWatermark(q, 'wm', 'pull', at(1000), at(999))).toEqual({ advanced: false, watermark: at(1000) });
    expect(await advanceWatermark(q, 'wm', 'pull', at(1000), at(1000))).toEqual({ advanced: false, watermark: at(1000) });
    expect(await advanceWatermark(q, 'wm', 'pull', at(500), at(3000))).toEqual({ advanced: false, watermark: at(1000) });
    expect(await advanceWatermark(q, 'wm', 'pull', at(1000), at(3000))).toEqual({ advanced: true, watermark: at(3000) });
    // An existing state row without a watermark (a run started, nothing stored yet) takes the first one.
    await upsertState(q, 'wm', 'push', { lastRunStarted: at(0) });
    expect(await advanceWatermark(q, 'wm', 'push', null, at(10))).toEqual({ advanced: true, watermark: at(10) });
    expect((await getState(q, 'wm', 'push'))?.lastRunStarted).toEqual(at(0));

    const race = await Promise.all(Array.from({ length: 10 }, (_, i) => advanceWatermark(q, 'wm', 'pull', at(3000), at(4000 + i))));
    const winners = race.map((r, i) => (r.advanced ? i : -1)).filter((i) => i >= 0);
    expect(winners).toHaveLength(1);
    expect((await getState(q, 'wm', 'pull'))?.watermark).toEqual(at(4000 + winners[0]));
    const first = await Promise.all(Array.from({ length: 10 }, (_, i) => advanceWatermark(q, 'wm-new', 'pull', null, at(i))));
    expect(first.filter((r) => r.advanced)).toHaveLength(1);
  });

  test('watermark never moves back: workers moving it forward and back at random while a reader watches', async () => {
    const q = db.knex;
    const rng = prng(17);
    await advanceWatermark(q, 'wm-random', 'push', null, at(0));
    const seen: number[] = [];
    const moved: number[] = [];
    let done = false;
    const reader = (async () => {
      while (!done) seen.push((await getState(q, 'wm-random', 'push'))!.watermark!.getTime());
    })();
    const worker = async () => {
      for (let i = 0; i < 25; i++) {
        const current = (await getState(q, 'wm-random', 'push'))!.watermark!;
        const next = at(current.getTime() - T0.getTime() + Math.floor(rng() * 2000) - 1000);
        const r = await advanceWatermark(q, 'wm-random', 'push', current, next);
        if (r.advanced) {
          expect(next.getTime()).toBeGreaterThan(current.getTime());
          moved.push(next.getTime());
        }
      }
    };
    await Promise.all(Array.from({ length: 5 }, worker));
    done = true;
    await reader;
    const final = (await getState(q, 'wm-random', 'push'))!.watermark!.getTime();
    expect(moved.length).toBeGreaterThan(0);
    expect(final).toBe(Math.max(...moved));
    seen.push(final);
    expect(seen.every((v, i) => i === 0 || v >= seen[i - 1])).toBe(true);
  });

  test('a schedule window is claimed by exactly one of 10 concurrent claims; windows and directions are separate; old claims are pruned', async () => {
    const q = db.knex;
    const claims = await Promise.all(Array.from({ length: 10 }, () => tryClaimRun(q, 'runs', 'push', '2025-03-01T12:00Z')));
    expect(claims.filter(Boolean)).toHaveLength(1);
    expect(await tryClaimRun(q, 'runs', 'push', '2025-03-01T12:00Z')).toBe(false);
    expect(await tryClaimRun(q, 'runs', 'pull', '2025-03-01T12:00Z')).toBe(true);
    expect(await tryClaimRun(q, 'runs', 'push', '2025-03-01T12:05Z')).toBe(true);
    expect(await tryClaimRun(q, 'runs-other', 'push', '2025-03-01T12:00Z')).toBe(true);
    // Both concurrent windows of two registries at once: one winner each.
    const mixed = await Promise.all(Array.from({ length: 20 }, (_, i) => tryClaimRun(q, `runs-${i % 2}`, 'pull', 'w1').then((won) => ({ r: i % 2, won }))));
    expect([0, 1].map((r) => mixed.filter((m) => m.r === r && m.won).length)).toEqual([1, 1]);
    await q.raw("update registry_run set claimed_at = ? where registry_id = 'runs' and window_key = '2025-03-01T12:00Z'", [at(-86_400_000)]);
    expect(await pruneRuns(q, at(-3_600_000))).toBe(2);
    expect(await tryClaimRun(q, 'runs', 'push', '2025-03-01T12:00Z')).toBe(true);
    expect(await tryClaimRun(q, 'runs', 'push', '2025-03-01T12:05Z')).toBe(false);
  });

  test('records: failures count per version, reach the dead-letter list once, with only what the registry said; success clears', async () => {
    const q = db.knex;
    const key: RecordKey = { registryId: 'rec', direction: 'push', resourceType: 'Immunization', resourceId: 'imm-1' };
    const outcome = {
      resourceType: 'OperationOutcome',
      text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Patient Jane Doe, born 1970-01-01</div>' },
      extension: [{ url: 'http://example.org/patient-name', valueString: 'Jane Doe' }],
      issue: [
        { severity: 'error', code: 'invalid', diagnostics: 'vaccineCode is not in the registry value set', expression: ['Immunization.patient.display'], details: { text: 'Jane Doe' } },
        { severity: 'bogus', code: 'Not A Code', diagnostics: 42 },
      ],
    };
    const stored = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'vaccineCode is not in the registry value set' }, { severity: 'error', code: 'exception' }] };
    expect(await getRecord(q, key)).toBeUndefined();
    const fail = (version: string) => recordOutcome(q, key, { ok: false, version, error: outcome, deadLetterAfter: 3 });
    expect(await fail('1')).toMatchObject({ ...key, version: '1', attempts: 1, status: 'rejected', lastError: stored, deadLetteredNow: false });
    expect(await fail('1')).toMatchObject({ attempts: 2, status: 'rejected', deadLetteredNow: false });
    expect(await fail('1')).toMatchObject({ attempts: 3, status: 'dead-letter', deadLetteredNow: true });
    expect(await fail('1')).toMatchObject({ attempts: 4, status: 'dead-letter', deadLetteredNow: false });
    const dead = await listDeadLetters(q, { registryId: 'rec' });
    expect(dead.map((d) => [d.resourceId, d.version, d.status, d.lastError])).toEqual([['imm-1', '1', 'dead-letter', stored]]);
    // Nothing of the narrative, extensions, details or expressions reached the database.
    const raw = (await q.raw("select last_error::text as e from registry_record where registry_id = 'rec'")) as { rows: { e: string }[] };
    expect(raw.rows[0].e).not.toMatch(/Jane|1970|patient-name|display/);
    // A new local version gets a fresh budget and leaves the dead-letter list.
    expect(await fail('2')).toMatchObject({ version: '2', attempts: 1, status: 'rejected', deadLetteredNow: false });
    expect(await listDeadLetters(q, { registryId: 'rec' })).toEqual([]);
    const ok = await recordOutcome(q, key, { ok: true, version: '2' });
    expect(ok).toMatchObject({ version: '2', attempts: 0, status: 'ok', lastError: null, deadLetteredNow: false });
    expect(await getRecord(q, key)).toEqual({ ...key, version: '2', lastUpdated: null, attempts: 0, lastError: null, status: 'ok', updatedAt: ok.updatedAt });

    // Pull records keep the registry's lastUpdated beside its versionId; a limit of one dead-letters at once.
    const pulled: RecordKey = { registryId: 'rec', direction: 'pull', resourceType: 'Immunization', resourceId: 'reg-9' };
    expect(await recordOutcome(q, pulled, { ok: true, version: null, lastUpdated: at(1234) })).toMatchObject({ version: null, lastUpdated: at(1234), status: 'ok' });
    expect(await recordOutcome(q, pulled, { ok: false, version: null, lastUpdated: at(5678), error: 'not an OperationOutcome', deadLetterAfter: 1 })).toMatchObject({
      lastUpdated: at(5678),
      attempts: 1,
      status: 'dead-letter',
      deadLetteredNow: true,
      lastError: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: 'no usable OperationOutcome was returned' }] },
    });
    expect((await listDeadLetters(q, { registryId: 'rec', direction: 'pull' })).map((d) => d.resourceId)).toEqual(['reg-9']);
    expect(await listDeadLetters(q, { registryId: 'rec', direction: 'push' })).toEqual([]);
    await expect(recordOutcome(q, pulled, { ok: false, version: null, error: outcome, deadLetterAfter: 0 })).rejects.toThrow(TypeError);
  });

  test('concurrent failures of one record: every attempt counted, dead-lettered exactly once', async () => {
    const q = db.knex;
    const key: RecordKey = { registryId: 'rec-race', direction: 'push', resourceType: 'Immunization', resourceId: 'imm-x' };
    const results = await Promise.all(Array.from({ length: 12 }, () => recordOutcome(q, key, { ok: false, version: '7', error: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient' }] }, deadLetterAfter: 5 })));
    expect(results.map((r) => r.attempts).sort((a, b) => a - b)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(results.filter((r) => r.deadLetteredNow)).toHaveLength(1);
    expect(results.find((r) => r.deadLetteredNow)?.attempts).toBe(5);
    expect(await getRecord(q, key)).toMatchObject({ attempts: 12, status: 'dead-letter' });
  });

  test('stripOutcome keeps severity, code and diagnostics only, bounded', () => {
    const long = 'x'.repeat(5000);
    const many = { issue: Array.from({ length: 30 }, () => ({ severity: 'warning', code: 'business-rule', diagnostics: long })) };
    const s = stripOutcome(many);
    expect(s.issue).toHaveLength(20);
    expect(s.issue[0]).toEqual({ severity: 'warning', code: 'business-rule', diagnostics: 'x'.repeat(2000) });
    expect(stripOutcome(null)).toEqual({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: 'no usable OperationOutcome was returned' }] });
    expect(stripOutcome({ issue: [null, 'x', { severity: 'fatal', code: 'timeout' }] })).toEqual({ resourceType: 'OperationOutcome', issue: [{ severity: 'fatal', code: 'timeout' }] });
  });

  test('review list: one open entry per registry reference, listed until resolved; a later meeting after resolution lists it again', async () => {
    const q = db.knex;
    const a = await addReview(q, { registryId: 'rv', registryReference: 'Immunization/r1', reason: 'no-match', detail: 'Patient/p9 at the registry: no local Patient with its identifier' });
    expect(a.created).toBe(true);
    const again = await addReview(q, { registryId: 'rv', registryReference: 'Immunization/r1', reason: 'several-matches', detail: '2 local Patients carry its identifier' });
    expect(again).toEqual({ id: a.id, created: false });
    const b = await addReview(q, { registryId: 'rv', registryReference: 'Immunization/r2', reason: 'no-match' });
    await addReview(q, { registryId: 'rv-other', registryReference: 'Immunization/r1', reason: 'no-match' });
    const open = await listReviews(q, { registryId: 'rv' });
    expect(open.map((r) => [r.id, r.registryReference, r.reason, r.detail, r.resolvedAt])).toEqual([
      [a.id, 'Immunization/r1', 'several-matches', '2 local Patients carry its identifier', null],
      [b.id, 'Immunization/r2', 'no-match', null, null],
    ]);
    expect(open[0].createdAt).toBeInstanceOf(Date);
    expect(await resolveReview(q, a.id)).toBe(true);
    expect(await resolveReview(q, a.id)).toBe(false);
    expect(await resolveReview(q, 0)).toBe(false);
    expect(await resolveReview(q, 2 ** 40)).toBe(false);
    expect((await listReviews(q, { registryId: 'rv' })).map((r) => r.id)).toEqual([b.id]);
    const c = await addReview(q, { registryId: 'rv', registryReference: 'Immunization/r1', reason: 'no-match' });
    expect(c.created).toBe(true);
    expect(c.id).not.toBe(a.id);
    const all = await listReviews(q, { registryId: 'rv', includeResolved: true });
    expect(all.map((r) => [r.id, r.resolvedAt === null])).toEqual([
      [a.id, false],
      [b.id, true],
      [c.id, true],
    ]);
    expect((await listReviews(q)).filter((r) => r.registryId === 'rv-other')).toHaveLength(1);
    // Ten pulls meeting the same unmatched Immunization at once list it once.
    const race = await Promise.all(Array.from({ length: 10 }, () => addReview(q, { registryId: 'rv-race', registryReference: 'Immunization/r9', reason: 'no-match' })));
    expect(race.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(race.map((r) => r.id)).size).toBe(1);
  });
});
