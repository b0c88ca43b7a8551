import { describe, expect, test } from '@jest/globals';
import { ConfigError, loadConfig } from '../../src/config/config.js';

describe('configuration', () => {
  test('PHI keys must be configured with DATABASE_URL (the embedded default generates them)', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://x@localhost/db' })).toThrow(/^PHI_KEYS_FILE:/);
    expect(loadConfig({ DATABASE_URL: 'postgres://x@localhost/db', PHI_ENCRYPTION: 'off', AUTH_KEYS_FILE: '/etc/vesta/auth-keys.json', AUDIT_KEYS_FILE: '/etc/vesta/audit-keys.json' }).phiEncryption).toBe(false);
    expect(loadConfig({}).unknownExtensions).toBe('accept');
    expect(loadConfig({ VALIDATION_UNKNOWN_EXTENSIONS: 'REJECT' }).unknownExtensions).toBe('reject');
    expect(loadConfig({}).phiEncryption).toBe(true);
  });

  test('authorization is on by default; with DATABASE_URL the token-signing ring must be configured; issuers are checked', () => {
    expect(loadConfig({}).auth).toBe(true);
    expect(loadConfig({ AUTH: 'off' }).auth).toBe(false);
    expect(() => loadConfig({ AUTH: 'maybe' })).toThrow(/^AUTH:/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://x@localhost/db', PHI_ENCRYPTION: 'off' })).toThrow(/^AUTH_KEYS_FILE:/);
    expect(loadConfig({ DATABASE_URL: 'postgres://x@localhost/db', PHI_ENCRYPTION: 'off', AUTH: 'off', AUDIT: 'off' }).auth).toBe(false);
    expect(() => loadConfig({ AUTH_KEYS: '{nope' })).toThrow(/^AUTH_KEYS:/);
    expect(loadConfig({ AUTH_ISSUERS: '[{"issuer":"https://idp.example.org","audience":"https://fhir.example.org"}]' }).authIssuers).toEqual([{ issuer: 'https://idp.example.org', audience: 'https://fhir.example.org' }]);
    expect(() => loadConfig({ AUTH_ISSUERS: '[{"issuer":"http://idp.example.org","audience":"a"}]' })).toThrow(/^AUTH_ISSUERS: .*https/);
    expect(() => loadConfig({ AUTH_ISSUERS: '[{"issuer":"https://idp.example.org"}]' })).toThrow(/^AUTH_ISSUERS:/);
    expect(() => loadConfig({ AUTH_ISSUERS: '{}' })).toThrow(/^AUTH_ISSUERS:/);
    expect(loadConfig({}).authClockSkewSeconds).toBe(30);
    expect(() => loadConfig({ AUTH_CLOCK_SKEW: '61' })).toThrow(/^AUTH_CLOCK_SKEW:/);
  });

  test('the audit ledger is on by default; with DATABASE_URL its checkpoint key ring must be configured', () => {
    expect(loadConfig({}).audit).toBe(true);
    expect(loadConfig({ AUDIT: 'off' }).audit).toBe(false);
    expect(() => loadConfig({ AUDIT: 'sometimes' })).toThrow(/^AUDIT:/);
    const db = { DATABASE_URL: 'postgres://x@localhost/db', PHI_ENCRYPTION: 'off', AUTH: 'off' };
    expect(() => loadConfig(db)).toThrow(/^AUDIT_KEYS_FILE: .*vesta keys init-audit/);
    expect(loadConfig({ ...db, AUDIT_KEYS_FILE: '/etc/vesta/audit-keys.json' }).auditKeysFile).toBe('/etc/vesta/audit-keys.json');
    expect(loadConfig({ ...db, AUDIT: 'off' }).audit).toBe(false);
  });

  test('defaults', () => {
    const c = loadConfig({});
    expect(c.port).toBe(8080);
    expect(c.baseUrl).toBe('http://localhost:8080');
    expect(c.basePath).toBe('');
    expect(c.databaseUrl).toBeUndefined();
    expect(c.dataDir).toMatch(/\/data$/);
    expect(c.maxBodyBytes).toBe(32 * 1024 * 1024);
    expect(c.corsOrigins).toBe('*');
    expect(Object.isFrozen(c)).toBe(true);
  });

  test('BASE_URL gives the mount path; sizes and origins parse', () => {
    const c = loadConfig({ BASE_URL: 'https://fhir.example.org/r4/', MAX_BODY_SIZE: '20mb', CORS_ORIGINS: 'https://a.example.org, https://b.example.org' });
    expect(c.baseUrl).toBe('https://fhir.example.org/r4');
    expect(c.basePath).toBe('/r4');
    expect(c.maxBodyBytes).toBe(20 * 1024 * 1024);
    expect(c.corsOrigins).toEqual(['https://a.example.org', 'https://b.example.org']);
  });

  test.each([
    ['PORT', 'eighty'],
    ['PORT', '70000'],
    ['BASE_URL', 'not a url'],
    ['BASE_URL', 'ftp://x.org'],
    ['DATABASE_URL', 'mysql://localhost/db'],
    ['REDIS_URL', 'http://localhost'],
    ['MAX_BODY_SIZE', 'lots'],
    ['MAX_BUNDLE_ENTRIES', '0'],
    ['LOG_LEVEL', 'loud'],
    ['CORS_ORIGINS', 'https://a.example.org/path'],
    ['SEARCH_DEFAULT_COUNT', '5000'],
    ['PAGE_TOKEN_SECRET', 'short'],
    ['PHI_ENCRYPTION', 'maybe'],
    ['PHI_KEYS', '{not json'],
    ['VALIDATION_UNKNOWN_EXTENSIONS', 'sometimes'],
  ])('%s=%s is refused naming the variable', (name, value) => {
    let err: unknown;
    try {
      loadConfig({ [name]: value });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).variable).toBe(name);
    expect((err as Error).message.startsWith(`${name}:`)).toBe(true);
    expect((err as Error).message).not.toContain('\n');
  });
});
