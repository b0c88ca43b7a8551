// Database failures translate to the truthful status (issue 14): outages, lost connections and an
// exhausted pool are 503 transient with Retry-After; a statement timeout is a 503 naming its setting;
// anything else stays a 500 without the driver's text.
import { describe, expect, test } from '@jest/globals';
import { createLogger } from '../../src/log/logger.js';
import { toErrorResponse } from '../../src/http/errors.js';

const log = createLogger('silent');
const pgError = (code: string, message: string) => Object.assign(new Error(message), { code });

describe('database errors', () => {
  test.each([
    ['connection refused', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5999'), { code: 'ECONNREFUSED' })],
    ['refused on every address', new AggregateError([Object.assign(new Error('x'), { code: 'ECONNREFUSED' })], 'connect failed')],
    ['admin shutdown', pgError('57P01', 'terminating connection due to administrator command')],
    ['cannot connect now', pgError('57P03', 'the database system is starting up')],
    ['too many connections', pgError('53300', 'sorry, too many clients already')],
    ['connection lost', new Error('Connection terminated unexpectedly')],
    ['pool exhausted', Object.assign(new Error('Knex: Timeout acquiring a connection. The pool is probably full.'), { name: 'KnexTimeoutError' })],
  ])('%s is a 503 transient with Retry-After', (_what, e) => {
    const r = toErrorResponse(e, log, 'req-1');
    expect(r.status).toBe(503);
    expect(r.body.issue?.[0].code).toBe('transient');
    expect(r.headers['Retry-After']).toMatch(/^\d+$/);
    expect(JSON.stringify(r.body)).not.toMatch(/127\.0\.0\.1|Knex|too many clients/);
  });

  test('a statement timeout is a 503 naming DATABASE_STATEMENT_TIMEOUT_MS', () => {
    const r = toErrorResponse(pgError('57014', 'canceling statement due to statement timeout'), log, 'req-2');
    expect(r.status).toBe(503);
    expect(r.body.issue?.[0].diagnostics).toContain('DATABASE_STATEMENT_TIMEOUT_MS');
  });

  test('other database errors stay a 500 without the driver message', () => {
    const r = toErrorResponse(pgError('42P01', 'relation "secret_table" does not exist'), log, 'req-3');
    expect(r.status).toBe(500);
    expect(JSON.stringify(r.body)).not.toContain('secret_table');
  });
});
