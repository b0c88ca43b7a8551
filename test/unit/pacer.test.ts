// Cooperative yielding (issue 14: no request stalls the event loop): the pacer gives the loop back
// during long work, and the paced forms of index extraction, blind rows and serialisation compute
// exactly what their synchronous forms do.
import { describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import type { Patient } from 'fhir/r4.js';
import { BlindIndexer } from '../../src/crypto/blind-index.js';
import { loadPhiPolicy } from '../../src/crypto/phi-policy.js';
import { resourceTypeInfo } from '../../src/fhir/definitions.js';
import { drainPaced, drainSync, pace, pause, SLICE_MS, stringifyArrayPaced } from '../../src/fhir/pacer.js';
import { BlindIndex } from '../../src/search/blind.js';
import { extractIndexRows, extractIndexRowsPaced } from '../../src/search/index-extract.js';

/** Busy-waits: synchronous work the event loop cannot interrupt. */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/** The longest time between two ticks of a 5 ms interval while `work` runs. */
async function longestGap(work: () => Promise<unknown>): Promise<number> {
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 5);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return Math.max(worst, performance.now() - last);
}

function bigPatient(names: number): Patient {
  return {
    resourceType: 'Patient',
    id: 'p',
    identifier: [{ system: 'urn:x', value: 'v1' }],
    birthDate: '1970-01-02',
    name: Array.from({ length: names }, (_, i) => ({ family: `Family${i}`, given: ['Given', `G${i % 7}`] })),
  };
}

describe('pacer', () => {
  test('paced work of 600 ms lets timers run; the same work unpaced does not', async () => {
    function* steps(): Generator<void, number, void> {
      for (let i = 0; i < 300; i++) {
        spin(2);
        yield;
      }
      return 42;
    }
    let result = 0;
    const paced = await longestGap(async () => (result = await drainPaced(steps())));
    expect(result).toBe(42);
    // A slice is SLICE_MS; the bound leaves room for a loaded 2-core machine (timer lateness, GC).
    expect(paced).toBeLessThan(SLICE_MS + 200);
    const unpaced = await longestGap(async () => drainSync(steps()));
    expect(unpaced).toBeGreaterThan(500);
  });

  test('pace() yields only once a slice is used up', async () => {
    await pause(); // starts a fresh slice
    let ran = false;
    setImmediate(() => (ran = true));
    await pace(); // a fresh slice: no yield, the immediate has not run
    expect(ran).toBe(false);
    spin(SLICE_MS + 5);
    await pace();
    expect(ran).toBe(true);
  });

  test('stringifyArrayPaced gives JSON.stringify', async () => {
    const items = [{ a: 1, b: null, c: undefined }, 'x\u2028"', 3, null, [], { d: [1, { e: 'é' }] }];
    expect(await stringifyArrayPaced(items)).toBe(JSON.stringify(items));
    expect(await stringifyArrayPaced([])).toBe('[]');
    const many = Array.from({ length: 5000 }, (_, i) => ({ t: 'Patient', i: `id${i}`, p: 'name', m: i.toString(16) }));
    expect(await stringifyArrayPaced(many)).toBe(JSON.stringify(many));
  });
});

describe('paced index rows', () => {
  test('extractIndexRowsPaced gives extractIndexRows, and keeps the loop free on 20,000 names', async () => {
    const small = bigPatient(3);
    expect(await extractIndexRowsPaced(small)).toEqual(extractIndexRows(small));
    const big = bigPatient(20_000);
    let paced: unknown;
    const gap = await longestGap(async () => (paced = await extractIndexRowsPaced(big)));
    expect(paced).toEqual(extractIndexRows(big));
    expect(gap).toBeLessThan(500);
  }, 60_000);

  test('blind rows: rowsOfPaced gives rowsOf, shared prefixes MACed once, and keeps the loop free', async () => {
    const policy = loadPhiPolicy(undefined, resourceTypeInfo().map((t) => t.type));
    const indexer = new BlindIndexer(randomBytes(32));
    const index = new BlindIndex(indexer, 'pacer-test', policy);
    const rows = extractIndexRows(bigPatient(5_000));
    const sync = index.rowsOf('Patient', rows);
    let paced: unknown;
    const gap = await longestGap(async () => (paced = await index.rowsOfPaced('Patient', rows)));
    expect(paced).toEqual(sync);
    expect(gap).toBeLessThan(500);
    // Every prefix of every family name is present (the memo changes the cost, not the rows).
    const macs = new Set(sync.filter((r) => r.param === 'family').map((r) => r.mac));
    for (const p of ['f', 'fa', 'family4', 'family4999']) expect(macs.has(indexer.prefix('Patient', 'family', p))).toBe(true);
  }, 60_000);
});
