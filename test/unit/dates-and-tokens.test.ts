import { describe, expect, test } from '@jest/globals';
import { parseDateRange } from '../../src/interactions/dates.js';
import { PageTokens } from '../../src/search/page-token.js';

describe('date ranges (search.html#date precision)', () => {
  test.each([
    ['2020', '2020-01-01T00:00:00.000Z', '2021-01-01T00:00:00.000Z'],
    ['2020-02', '2020-02-01T00:00:00.000Z', '2020-03-01T00:00:00.000Z'],
    ['2020-02-29', '2020-02-29T00:00:00.000Z', '2020-03-01T00:00:00.000Z'],
    ['2020-02-29T10:00Z', '2020-02-29T10:00:00.000Z', '2020-02-29T10:01:00.000Z'],
    ['2020-02-29T10:00:05+02:00', '2020-02-29T08:00:05.000Z', '2020-02-29T08:00:06.000Z'],
  ])('%s', (raw, start, end) => {
    const r = parseDateRange(raw, 'x');
    expect(r.start.toISOString()).toBe(start);
    expect(r.end.toISOString()).toBe(end);
  });

  test.each(['2021-02-29', '2020-13', 'yesterday', '2020-01-01T10:00', ''])('%s is refused', (raw) => {
    expect(() => parseDateRange(raw, 'x')).toThrow();
  });
});

describe('page tokens', () => {
  test('round trip, and refusal when altered or used for another query', () => {
    const t = new PageTokens('k'.repeat(32));
    const tok = t.sign('scope-a', { after: 'abc' });
    expect(t.verify('scope-a', tok)).toEqual({ after: 'abc' });
    expect(() => t.verify('scope-b', tok)).toThrow();
    const [body, sig] = tok.split('.');
    const forged = Buffer.from(JSON.stringify({ after: 'zzz' })).toString('base64url');
    expect(() => t.verify('scope-a', `${forged}.${sig}`)).toThrow();
    expect(() => t.verify('scope-a', `${body}.${sig.slice(1)}`)).toThrow();
    expect(() => new PageTokens('j'.repeat(32)).verify('scope-a', tok)).toThrow();
  });
});
