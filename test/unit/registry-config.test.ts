// Registry configuration (issue 17): the file's checks, every problem on a line of its own, defaults,
// frozen results, and the private key read at load but never shown.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type JWK } from 'jose';
import { nextWindow } from '../../src/jobs/registry/scheduler.js';
import { cronProblem, DEFAULT_REGISTRY_SCOPE, loadRegistries, registrySigningKey, RegistryConfigError, type BackendServicesAuth } from '../../src/jobs/registry/config.js';

let dir: string;
/** Private JWKs by name, and their "d" values, which must never appear in any output. */
const jwks: Record<string, JWK> = {};
const publics: Record<string, JWK> = {};

async function makeKey(name: string, alg: 'ES384' | 'ES256' | 'RS384', withAlg: boolean): Promise<void> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  jwks[name] = { ...(await exportJWK(privateKey)), kid: `${name}-kid`, ...(withAlg ? { alg } : {}) };
  publics[name] = await exportJWK(publicKey);
  writeFileSync(join(dir, 'keys', `${name}.jwk.json`), JSON.stringify(jwks[name]));
}

function writeKey(name: string, content: unknown): string {
  const path = join(dir, 'keys', `${name}.jwk.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

let fileCount = 0;
function configFile(content: unknown): string {
  const path = join(dir, `registries-${++fileCount}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

/** The problems loadRegistries reports for this content (fails the test if it loads). */
function problems(content: unknown): readonly string[] {
  try {
    loadRegistries(configFile(content));
  } catch (e) {
    expect(e).toBeInstanceOf(RegistryConfigError);
    expect((e as Error).message).toBe((e as RegistryConfigError).problems.join('\n'));
    return (e as RegistryConfigError).problems;
  }
  throw new Error('loaded without problems');
}

const base = {
  id: 'iis-test',
  baseUrl: 'https://iis.example.org/fhir/',
  auth: { type: 'backend-services', tokenUrl: 'https://iis.example.org/auth/token', clientId: 'vesta', privateKeyFile: 'keys/es384.jwk.json' },
  direction: 'both',
  schedule: { everySeconds: 300 },
  patientIdentifierSystem: 'urn:oid:2.16.840.1.113883.4.1',
};

function allSecrets(): string[] {
  return Object.values(jwks).flatMap((k) => [k.d, k.p, k.q, k.dp, k.dq, k.qi].filter((v): v is string => typeof v === 'string'));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vesta-registries-'));
  mkdirSync(join(dir, 'keys'));
  await makeKey('es384', 'ES384', true);
  await makeKey('es256', 'ES256', false);
  await makeKey('rs384', 'RS384', false);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('registry configuration', () => {
  test('a minimal registry gets every default, its key path resolved from the file, and comes back frozen', () => {
    const list = loadRegistries(configFile([base]));
    const [r] = list;
    const auth = r.auth as BackendServicesAuth;
    expect({ ...r, auth: { ...auth, privateKey: undefined } }).toEqual({
      id: 'iis-test',
      baseUrl: 'https://iis.example.org/fhir',
      auth: {
        type: 'backend-services',
        tokenUrl: 'https://iis.example.org/auth/token',
        clientId: 'vesta',
        privateKeyFile: join(dir, 'keys', 'es384.jwk.json'),
        kid: 'es384-kid',
        alg: 'ES384',
        scope: DEFAULT_REGISTRY_SCOPE,
        privateKey: undefined,
      },
      direction: 'both',
      schedule: { everySeconds: 300 },
      pageSize: 100,
      requestTimeoutMs: 10000,
      rateLimit: { requests: 10, perSeconds: 1 },
      patientIdentifierSystem: 'urn:oid:2.16.840.1.113883.4.1',
      breaker: { failures: 5, cooldownSeconds: 60 },
      retry: { attempts: 5, baseDelayMs: 500, maxDelayMs: 60000 },
      deadLetterAfter: 5,
    });
    expect(auth.privateKey.type).toBe('private');
    expect(DEFAULT_REGISTRY_SCOPE).toBe('system/Immunization.cruds system/Patient.crus');
    for (const o of [list, r, r.auth, r.schedule, r.rateLimit, r.breaker, r.retry]) expect(Object.isFrozen(o)).toBe(true);
    expect(() => {
      (r as { pageSize: number }).pageSize = 5;
    }).toThrow(TypeError);
  });

  test('every setting given explicitly is taken as given; several registries, auth none, cron schedules', () => {
    const list = loadRegistries(
      configFile([
        {
          ...base,
          auth: { ...base.auth, privateKeyFile: join(dir, 'keys', 'rs384.jwk.json'), alg: 'RS256', scope: ' system/Immunization.rs   system/Patient.rs ' },
          direction: 'pull',
          schedule: { cron: ' 0  2 * *   mon-fri ' },
          pageSize: 1000,
          requestTimeoutMs: 100,
          rateLimit: { requests: 50, perSeconds: 10 },
          breaker: { failures: 3, cooldownSeconds: 120 },
          retry: { attempts: 1, baseDelayMs: 100, maxDelayMs: 100 },
          deadLetterAfter: 2,
        },
        { id: 'local-0', baseUrl: 'http://127.0.0.1:8081', auth: { type: 'none' }, direction: 'push', schedule: { everySeconds: 10 }, patientIdentifierSystem: 'https://iis.example.org/patient-id', rateLimit: { requests: 2 } },
        { ...base, id: 'p256', baseUrl: 'http://localhost:9000/', auth: { ...base.auth, privateKeyFile: 'keys/es256.jwk.json' } },
      ]),
    );
    expect(list.map((r) => r.id)).toEqual(['iis-test', 'local-0', 'p256']);
    const [a, b, c] = list;
    expect({ alg: (a.auth as BackendServicesAuth).alg, scope: (a.auth as BackendServicesAuth).scope, kid: (a.auth as BackendServicesAuth).kid }).toEqual({ alg: 'RS256', scope: 'system/Immunization.rs system/Patient.rs', kid: 'rs384-kid' });
    expect([a.direction, a.schedule, a.pageSize, a.requestTimeoutMs, a.rateLimit, a.breaker, a.retry, a.deadLetterAfter]).toEqual([
      'pull',
      { cron: '0 2 * * mon-fri' },
      1000,
      100,
      { requests: 50, perSeconds: 10 },
      { failures: 3, cooldownSeconds: 120 },
      { attempts: 1, baseDelayMs: 100, maxDelayMs: 100 },
      2,
    ]);
    expect([b.auth, b.baseUrl, b.rateLimit]).toEqual([{ type: 'none' }, 'http://127.0.0.1:8081', { requests: 2, perSeconds: 1 }]);
    // Without an alg in the key or the file, the key decides: P-256 -> ES256 (RSA -> RS384, below).
    expect([(c.auth as BackendServicesAuth).alg, c.baseUrl]).toEqual(['ES256', 'http://localhost:9000']);
    const [rsa] = loadRegistries(configFile([{ ...base, auth: { ...base.auth, privateKeyFile: 'keys/rs384.jwk.json' } }]));
    expect((rsa.auth as BackendServicesAuth).alg).toBe('RS384');
    expect(loadRegistries(configFile([]))).toEqual([]);
  });

  test('every problem of every registry is reported, one line each, prefixed with the id or the index', () => {
    expect(
      problems([
        { ...base, baseUrl: 'http://iis.example.org/fhir', direction: 'sideways', pageSize: 0, requestTimeoutMs: 99.5, schedule: { everySeconds: 5 } },
        { ...base, id: 'Bad_Id', retry: { baseDelayMs: 1000, maxDelayMs: 10 }, breaker: { failures: '5' } },
        'not an object',
        { ...base, auth: { type: 'none' }, schedule: { everySeconds: 60, cron: '* * * * *' }, rateLimit: { requests: 0, perSeconds: 0 } },
        { ...base, auth: { type: 'none' }, patientIdentifierSystem: 'not a uri', deadLetterAfter: 1001 },
        { id: 'empty' },
        { ...base, id: undefined },
      ]),
    ).toEqual([
      'registry "iis-test": baseUrl must use https (http only on a loopback host), got "http://iis.example.org/fhir"',
      'registry "iis-test": direction must be one of push, pull, both, got "sideways"',
      'registry "iis-test": schedule.everySeconds must be an integer from 10 to 2678400, got 5',
      'registry "iis-test": pageSize must be an integer from 1 to 1000, got 0',
      'registry "iis-test": requestTimeoutMs must be an integer from 100 to 120000, got 99.5',
      'registry [1]: id must be 1 to 40 characters of a-z, 0-9 and -, got "Bad_Id"',
      'registry [1]: breaker.failures must be an integer from 1 to 1000, got "5"',
      'registry [1]: retry.maxDelayMs (10) must not be below baseDelayMs (1000)',
      'registry [2]: must be an object, got "not an object"',
      'registry "iis-test": id is used by more than one registry ([0] and [3])',
      'registry "iis-test": schedule needs exactly one of everySeconds or cron',
      'registry "iis-test": rateLimit.requests must be an integer from 1 to 10000, got 0',
      'registry "iis-test": rateLimit.perSeconds must be an integer from 1 to 3600, got 0',
      'registry "iis-test": id is used by more than one registry ([0] and [4])',
      'registry "iis-test": patientIdentifierSystem must be an absolute URI (https://..., urn:oid:...), got "not a uri"',
      'registry "iis-test": deadLetterAfter must be an integer from 1 to 1000, got 1001',
      'registry "empty": baseUrl is required',
      'registry "empty": auth is required',
      'registry "empty": direction is required (push, pull, both)',
      'registry "empty": schedule is required',
      'registry "empty": patientIdentifierSystem is required',
      'registry [6]: id is required (1 to 40 characters of a-z, 0-9 and -)',
    ]);
  });

  test('unknown keys are errors at every level, with the nearest known key suggested', () => {
    expect(
      problems([
        { ...base, pagesize: 50, retry: { maxDelay: 1000 }, auth: { type: 'backend-services', tokenUrl: base.auth.tokenUrl, clientID: 'x', privateKeyFile: 'keys/es384.jwk.json' }, schedule: { everySeconds: 60, jitter: 1 }, colour: 'blue' },
        { ...base, id: 'other', auth: { type: 'none', tokenUrl: 'https://iis.example.org/token' }, rateLimit: { request: 5 }, breaker: { cooldown: 5 } },
      ]),
    ).toEqual([
      'registry "iis-test": auth.clientId is required',
      'registry "iis-test": auth.clientID is not a known setting (did you mean "clientId"?)',
      'registry "iis-test": schedule.jitter is not a known setting',
      'registry "iis-test": retry.maxDelay is not a known setting (did you mean "maxDelayMs"?)',
      'registry "iis-test": pagesize is not a known setting (did you mean "pageSize"?)',
      'registry "iis-test": colour is not a known setting',
      'registry "other": auth.tokenUrl is not a known setting',
      'registry "other": rateLimit.request is not a known setting (did you mean "requests"?)',
      'registry "other": breaker.cooldown is not a known setting',
    ]);
  });

  test('URLs: https, or http on a loopback host only; no credentials, fragments, or (for the base) queries', () => {
    const url = (baseUrl: string, tokenUrl = 'https://iis.example.org/token') => problems([{ ...base, baseUrl, auth: { ...base.auth, tokenUrl } }]);
    expect(url('ftp://iis.example.org')).toEqual(['registry "iis-test": baseUrl must use https (http only on a loopback host), got "ftp://iis.example.org"']);
    expect(url('https://user:pw@iis.example.org')).toEqual(['registry "iis-test": baseUrl must not carry a user name or password']);
    expect(url('https://iis.example.org', 'http://vesta:s3cret@iis.example.org/token')).toEqual(['registry "iis-test": auth.tokenUrl must not carry a user name or password']);
    expect(url('https://iis.example.org/fhir?x=1')).toEqual(['registry "iis-test": baseUrl must not carry a query']);
    expect(url('https://iis.example.org/fhir#x')).toEqual(['registry "iis-test": baseUrl must not carry a fragment']);
    expect(url('not a url')).toEqual(['registry "iis-test": baseUrl is not a URL: "not a url"']);
    expect(url('https://iis.example.org', 'http://10.0.0.1/token')).toEqual(['registry "iis-test": auth.tokenUrl must use https (http only on a loopback host), got "http://10.0.0.1/token"']);
    expect(url('https://iis.example.org', 'http://localhost.example.org/token')).toEqual([
      'registry "iis-test": auth.tokenUrl must use https (http only on a loopback host), got "http://localhost.example.org/token"',
    ]);
    for (const ok of ['http://127.0.0.1:8080/fhir', 'http://127.1.2.3/fhir', 'http://[::1]:8080', 'http://localhost/']) {
      expect(loadRegistries(configFile([{ ...base, baseUrl: ok, auth: { ...base.auth, tokenUrl: `${ok.replace(/\/$/, '')}/auth/token?aud=x` } }]))[0].auth).toMatchObject({ tokenUrl: expect.stringContaining('?aud=x') });
    }
  });

  test('the private key is checked at load; no problem line, inspection or serialization shows key material', () => {
    const { privateKey: rsaSmall } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const { privateKey: p521 } = generateKeyPairSync('ec', { namedCurve: 'P-521' });
    // The private scalar of another P-256 key under es256's public point.
    const { privateKey: second } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const secondJwk = second.export({ format: 'jwk' });
    const cases: [string, unknown, string][] = [
      ['missing', undefined, 'cannot be read (ENOENT)'],
      ['not-json', `{"kty":"EC","d":"${jwks.es384.d}",}`, 'is not valid JSON'],
      ['array', [jwks.es384], 'must hold one JWK (a JSON object)'],
      ['jwks', { keys: [jwks.es384] }, 'holds a key set; it must hold the one private JWK'],
      ['oct', { kty: 'oct', k: 'c2VjcmV0', kid: 'x' }, 'must be an EC (P-384, P-256) or RSA key, got kty "oct"'],
      ['p521', { ...p521.export({ format: 'jwk' }), kid: 'x' }, 'must be an EC key on P-384 or P-256, got crv "P-521"'],
      ['public', { ...publics.es384, kid: 'x' }, 'holds a public key; the private key (with "d") is needed'],
      ['no-kid', { ...jwks.es384, kid: undefined }, 'needs a "kid" (sent in the assertion header, the registry finds the public key by it)'],
      ['ps256', { ...jwks.rs384, alg: 'PS256' }, 'has alg "PS256"; allowed: ES384, RS384, ES256, RS256'],
      ['enc', { ...jwks.rs384, use: 'enc' }, 'has use "enc"; a signing key ("sig") is needed'],
      ['broken', { ...jwks.es384, x: undefined }, 'is not a usable private key (a field is missing or malformed)'],
      ['short', { ...rsaSmall.export({ format: 'jwk' }), kid: 'x' }, 'is an RSA key shorter than 2048 bits'],
      ['mixed', { ...jwks.es256, d: secondJwk.d }, 'is inconsistent: its public part does not match its private part'],
    ];
    for (const [name, content, message] of cases) {
      const path = join(dir, 'keys', `${name}.jwk.json`);
      if (content !== undefined) writeKey(name, content);
      expect([name, problems([{ ...base, auth: { ...base.auth, privateKeyFile: `keys/${name}.jwk.json` } }])]).toEqual([name, [`registry "iis-test": auth.privateKeyFile "${path}" ${message}`]]);
    }
    // Nothing shows the key: not the loaded configuration, not its JSON, not any of the problems above.
    const loaded = loadRegistries(configFile([base, { ...base, id: 'rsa', auth: { ...base.auth, privateKeyFile: 'keys/rs384.jwk.json' } }]));
    const shown = [inspect(loaded, { depth: Infinity, showHidden: true }), JSON.stringify(loaded), String(loaded[0].auth)];
    for (const [name] of cases) {
      try {
        loadRegistries(configFile([{ ...base, auth: { ...base.auth, privateKeyFile: `keys/${name}.jwk.json` } }]));
      } catch (e) {
        shown.push(inspect(e, { depth: Infinity }));
      }
    }
    const secrets = [...allSecrets(), String(secondJwk.d)];
    for (const text of shown) for (const s of secrets) expect(text.includes(s)).toBe(false);
  });

  test('alg: from the file, else from the key; it must fit the key and agree with an alg the key names', () => {
    const withKey = (file: string, alg?: string) => [{ ...base, auth: { ...base.auth, privateKeyFile: file, ...(alg ? { alg } : {}) } }];
    expect(problems(withKey('keys/es384.jwk.json', 'RS384'))).toEqual([`registry "iis-test": auth.alg is RS384 but the key in "${join(dir, 'keys', 'es384.jwk.json')}" is for ES384`]);
    expect(problems(withKey('keys/es256.jwk.json', 'ES384'))).toEqual([`registry "iis-test": auth.alg is ES384, which does not fit the key in "${join(dir, 'keys', 'es256.jwk.json')}" (EC P-256)`]);
    expect(problems(withKey('keys/rs384.jwk.json', 'ES256'))).toEqual([`registry "iis-test": auth.alg is ES256, which does not fit the key in "${join(dir, 'keys', 'rs384.jwk.json')}" (RSA)`]);
    writeKey('rsa-says-es', { ...jwks.rs384, alg: 'ES384' });
    expect(problems(withKey('keys/rsa-says-es.jwk.json'))).toEqual([`registry "iis-test": auth.privateKeyFile names a key for ES384, which does not fit the key in "${join(dir, 'keys', 'rsa-says-es.jwk.json')}" (RSA)`]);
    expect(problems(withKey('keys/es384.jwk.json', 'HS256'))).toEqual(['registry "iis-test": auth.alg must be one of ES384, RS384, ES256, RS256, got "HS256"']);
    expect(problems([{ ...base, auth: { type: 'backend-services' } }])).toEqual([
      'registry "iis-test": auth.tokenUrl is required',
      'registry "iis-test": auth.clientId is required',
      'registry "iis-test": auth.privateKeyFile is required',
    ]);
    expect(problems([{ ...base, auth: { type: 'basic' } }])).toEqual(['registry "iis-test": auth.type must be one of none, backend-services, got "basic"']);
    expect(problems([{ ...base, auth: { ...base.auth, clientId: 'a\nb', scope: '' } }])).toEqual([
      'registry "iis-test": auth.clientId must be a non-empty string without control characters, got "a\\nb"',
      'registry "iis-test": auth.scope must be a non-empty string without control characters, got ""',
    ]);
  });

  test('the file itself: unreadable, not JSON, not an array are one line naming the file', () => {
    const missing = join(dir, 'nope.json');
    expect(() => loadRegistries(missing)).toThrow(new RegistryConfigError(missing, [`${missing}: cannot be read (ENOENT)`]));
    const notJson = configFile('[{"id": ');
    expect(() => loadRegistries(notJson)).toThrow(new RegExp(`^${notJson.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: is not valid JSON \\(.+\\)$`));
    const obj = configFile({ registries: [base] });
    expect(() => loadRegistries(obj)).toThrow(new RegistryConfigError(obj, [`${obj}: must be a JSON array of registries`]));
  });

  test('cron: five fields of numbers, names, *, ranges, lists and steps within each field\'s bounds', () => {
    for (const ok of ['* * * * *', '*/5 * * * *', '0 2 * * mon-fri', '15,45 8-18/2 1 jan,jul 0', '0 0 31 12 7', '0-59/15 */3 1-15 JAN-Dec SUN']) expect([ok, cronProblem(ok)]).toEqual([ok, undefined]);
    // What the check accepts, the scheduler reads: each has a next window after any time.
    for (const ok of ['* * * * *', '*/5 * * * *', '0 2 * * mon-fri', '15,45 8-18/2 1 jan,jul 0', '0 0 31 12 7', '0-59/15 */3 1-15 JAN-Dec SUN']) {
      const after = Date.UTC(2026, 1, 27, 23, 59, 30);
      expect(nextWindow({ cron: ok }, after)).toBeGreaterThan(after);
    }
    expect(new Date(nextWindow({ cron: '0 2 * * mon-fri' }, Date.UTC(2026, 11, 5, 18, 0))).toISOString()).toBe('2026-12-07T02:00:00.000Z');
    expect(nextWindow({ everySeconds: 60 }, Date.UTC(2026, 0, 1, 0, 0, 59, 999))).toBe(Date.UTC(2026, 0, 1, 0, 1));
    expect(nextWindow({ everySeconds: 60 }, Date.UTC(2026, 0, 1, 0, 1))).toBe(Date.UTC(2026, 0, 1, 0, 2));
    const bad: [string, string][] = [
      ['* * * *', 'must have 5 fields (minute hour day-of-month month day-of-week), got 4'],
      ['0 0 * * * *', 'must have 5 fields (minute hour day-of-month month day-of-week), got 6'],
      ['60 * * * *', 'minute field "60" is invalid (0-59, *, ranges, lists, /steps)'],
      ['* 24 * * *', 'hour field "24" is invalid (0-23, *, ranges, lists, /steps)'],
      ['* * 0 * *', 'day of month field "0" is invalid (1-31, *, ranges, lists, /steps)'],
      ['* * * 13 *', 'month field "13" is invalid (1-12 or names, *, ranges, lists, /steps)'],
      ['* * * * 8', 'day of week field "8" is invalid (0-7 or names, *, ranges, lists, /steps)'],
      ['5-1 * * * *', 'minute field "5-1" is invalid (0-59, *, ranges, lists, /steps)'],
      ['*/0 * * * *', 'minute field "*/0" is invalid (0-59, *, ranges, lists, /steps)'],
      ['1,,2 * * * *', 'minute field "1,,2" is invalid (0-59, *, ranges, lists, /steps)'],
      ['* * * * L', 'day of week field "L" is invalid (0-7 or names, *, ranges, lists, /steps)'],
      ['? * * * *', 'minute field "?" is invalid (0-59, *, ranges, lists, /steps)'],
    ];
    for (const [expr, why] of bad) expect([expr, cronProblem(expr)]).toEqual([expr, why]);
    expect(problems([{ ...base, schedule: { cron: '60 * * * *' } }])).toEqual(['registry "iis-test": schedule.cron minute field "60" is invalid (0-59, *, ranges, lists, /steps)']);
    expect(problems([{ ...base, schedule: {} }])).toEqual(['registry "iis-test": schedule needs exactly one of everySeconds or cron']);
  });

  test('registrySigningKey signs client assertions the registry verifies with the public key, with the configured alg and kid', async () => {
    const list = loadRegistries(
      configFile([
        base,
        { ...base, id: 'rs', auth: { ...base.auth, privateKeyFile: 'keys/rs384.jwk.json' } },
        { ...base, id: 'rs256', auth: { ...base.auth, privateKeyFile: 'keys/rs384.jwk.json', alg: 'RS256' } },
        { ...base, id: 'es256', auth: { ...base.auth, privateKeyFile: 'keys/es256.jwk.json' } },
      ]),
    );
    const pub = { 'iis-test': publics.es384, rs: publics.rs384, rs256: publics.rs384, es256: publics.es256 } as Record<string, JWK>;
    for (const r of list) {
      const auth = r.auth as BackendServicesAuth;
      const { key, kid } = await registrySigningKey(auth);
      expect(key.extractable).toBe(false);
      const jwt = await new SignJWT({}).setProtectedHeader({ alg: auth.alg, kid }).setIssuer('vesta').setAudience(auth.tokenUrl).setExpirationTime('4m').sign(key);
      const { protectedHeader } = await jwtVerify(jwt, await importJWK(pub[r.id], auth.alg), { audience: auth.tokenUrl, algorithms: [auth.alg] });
      expect([r.id, protectedHeader]).toEqual([r.id, { alg: auth.alg, kid: auth.kid }]);
    }
  });
});
