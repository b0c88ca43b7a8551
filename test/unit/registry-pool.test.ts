// The registry sync handles several records at once (sync.ts inOrderPool) while its watermark may only
// pass the handled prefix: the pool must say exactly which item is the first not done.
import { describe, expect, test } from '@jest/globals';
import { inOrderPool } from '../../src/jobs/registry/sync.js';
import { prng } from '../support/prng.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('inOrderPool', () => {
  test('all succeed: every item once, at most `limit` at once, firstUndone = length', async () => {
    let running = 0;
    let peak = 0;
    const seen: number[] = [];
    const r = await inOrderPool([...Array(40).keys()], 5, async (x) => {
      running++;
      peak = Math.max(peak, running);
      await tick(x % 3);
      seen.push(x);
      running--;
    });
    expect(r).toEqual({ firstUndone: 40 });
    expect(seen.sort((a, b) => a - b)).toEqual([...Array(40).keys()]);
    expect(peak).toBe(5);
    expect(await inOrderPool([], 8, async () => undefined)).toEqual({ firstUndone: 0 });
  });

  test('after a failure nothing more starts, calls in flight finish, and the first failed or unstarted index is reported', async () => {
    const rnd = prng(17);
    for (let round = 0; round < 200; round++) {
      const n = 1 + Math.floor(rnd() * 30);
      const limit = 1 + Math.floor(rnd() * 8);
      const fails = new Set([...Array(n).keys()].filter(() => rnd() < 0.1));
      const started: number[] = [];
      const finished = new Set<number>();
      const delays = [...Array(n)].map(() => Math.floor(rnd() * 3));
      const r = await inOrderPool([...Array(n).keys()], limit, async (x) => {
        started.push(x);
        await tick(delays[x]);
        if (fails.has(x)) throw new Error(`item ${x}`);
        finished.add(x);
      });
      // Launched in order, none after the first failure was seen.
      expect(started).toEqual([...Array(started.length).keys()]);
      // Every item before firstUndone succeeded; the item at firstUndone failed or never started.
      for (let i = 0; i < r.firstUndone; i++) expect(finished.has(i)).toBe(true);
      if (r.firstUndone < n) {
        expect(finished.has(r.firstUndone)).toBe(false);
        if (fails.has(r.firstUndone) && started.includes(r.firstUndone)) expect((r.error as Error).message).toBe(`item ${r.firstUndone}`);
        else expect(started.includes(r.firstUndone)).toBe(false);
      } else expect([...fails].filter((f) => started.includes(f))).toEqual([]);
      const firstFail = [...Array(n).keys()].find((i) => fails.has(i));
      if (firstFail !== undefined) expect(r.firstUndone).toBeLessThanOrEqual(firstFail);
    }
  });
});
