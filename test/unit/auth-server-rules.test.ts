// The authorization server's own rules, without a server: scope coverage and narrowing (what a token
// may carry), client registration checks, password hashing, and discovery with the server on or off.
import { describe, expect, test } from '@jest/globals';
import { covers, narrowScopes, defaultUserScopes } from '../../src/auth-server/smart-scopes.js';
import { checkRegistration, toProviderMetadata, type ClientRegistration } from '../../src/auth-server/clients.js';
import { hashPassword, verifyPassword } from '../../src/auth-server/users.js';
import { smartConfiguration } from '../../src/auth/smart-configuration.js';
import { loadConfig } from '../../src/config/config.js';

describe('scope coverage', () => {
  test.each([
    ['patient/*.rs', 'patient/Observation.rs', true],
    ['patient/*.rs', 'patient/Observation.r', true],
    ['patient/*.read', 'patient/Observation.rs', true],
    ['patient/*.rs', 'patient/Observation.read', true],
    ['patient/*.rs', 'patient/Observation.cruds', false],
    ['patient/*.rs', 'user/Observation.rs', false],
    ['user/*.cruds', 'system/Patient.r', false],
    ['patient/Observation.rs', 'patient/*.rs', false],
    ['patient/Observation.rs', 'patient/Condition.rs', false],
    ['patient/*.rs', 'patient/Observation.rs?category=laboratory', true],
    ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs', false],
    ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=vital-signs', false],
    ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=laboratory&code=x', true],
    ['openid', 'openid', true],
    ['launch', 'launch/patient', false],
    ['patient/*.rs', 'openid', false],
    ['patient/*.rs', 'patient/x.rs', false],
  ])('%s covers %s: %s', (allowed, requested, expected) => {
    expect(covers(allowed, requested)).toBe(expected);
  });

  test('narrowing keeps what every list covers and names the list that refused the rest', () => {
    const n = narrowScopes(['patient/Observation.rs', 'user/*.rs', 'openid', 'patient/Observation.rs', 'bogus/scope', 'system/*.rs'], [
      { name: 'client', scopes: 'patient/*.rs user/*.rs openid' },
      { name: 'user', scopes: 'patient/*.cruds openid' },
    ]);
    expect(n.granted).toEqual(['patient/Observation.rs', 'openid']);
    expect(n.refused).toEqual([
      { scope: 'user/*.rs', by: 'user' },
      { scope: 'bogus/scope', by: 'not a SMART scope this server knows' },
      { scope: 'system/*.rs', by: 'client' },
    ]);
  });

  test('default user scopes: a patient only their own compartment, read-only', () => {
    expect(defaultUserScopes('Patient/1')).toBe('patient/*.rs');
    expect(defaultUserScopes('Practitioner/1')).toBe('user/*.cruds patient/*.cruds');
  });
});

describe('client registration', () => {
  const pub: ClientRegistration = { client_id: 'app', type: 'public', redirect_uris: ['https://app.example/cb'], scope: 'launch/patient patient/*.rs' };
  const opts = { allowLoopbackJwksUri: false };

  test('a good public client; provider metadata with PKCE-only public auth', () => {
    const meta = toProviderMetadata(checkRegistration(pub, opts));
    expect(meta).toMatchObject({ token_endpoint_auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'], scope: 'launch/patient', smart_scopes: 'launch/patient patient/*.rs' });
  });

  test.each<[string, Partial<ClientRegistration>, RegExp]>([
    ['http redirect off localhost', { redirect_uris: ['http://app.example/cb'] }, /must use https/],
    ['redirect with fragment', { redirect_uris: ['https://app.example/cb#x'] }, /fragment/],
    ['relative redirect', { redirect_uris: ['/cb'] }, /not an absolute URL/],
    ['no scopes', { scope: '' }, /at least one allowed scope/],
    ['unknown scope', { scope: 'patient/*.rs admin' }, /scope admin is neither/],
    ['public with system scope', { scope: 'system/*.rs' }, /cannot be allowed system/],
    ['bad id', { client_id: 'a b' }, /client_id/],
  ])('refused: %s', (_name, change, message) => {
    expect(() => checkRegistration({ ...pub, ...change }, opts)).toThrow(message);
  });

  test('confidential clients: public keys with kids, one key source, https JWKS URLs', () => {
    const conf = { client_id: 'svc', type: 'confidential-asymmetric' as const, redirect_uris: [], scope: 'system/*.rs' };
    expect(() => checkRegistration({ ...conf, jwks: { keys: [{ kty: 'EC', kid: 'k', d: 'secret' }] } }, opts)).toThrow(/private/);
    expect(() => checkRegistration({ ...conf, jwks: { keys: [{ kty: 'EC' }] } }, opts)).toThrow(/kid/);
    expect(() => checkRegistration(conf, opts)).toThrow(/exactly one/);
    expect(() => checkRegistration({ ...conf, jwks_uri: 'http://127.0.0.1/jwks' }, opts)).toThrow(/https/);
    expect(checkRegistration({ ...conf, jwks_uri: 'http://127.0.0.1/jwks' }, { allowLoopbackJwksUri: true }).jwks_uri).toBe('http://127.0.0.1/jwks');
    const meta = toProviderMetadata(checkRegistration({ ...conf, jwks_uri: 'https://svc.example/jwks' }, opts));
    expect(meta).toMatchObject({ token_endpoint_auth_method: 'private_key_jwt', grant_types: ['client_credentials'], response_types: [] });
    expect('scope' in meta).toBe(false);
  });
});

describe('passwords', () => {
  test('scrypt hashes verify the right password only; short ones are refused; garbage never verifies', async () => {
    const h = await hashPassword('correct horse');
    expect(h).toMatch(/^scrypt\$32768\$8\$1\$[\w-]+\$[\w-]+$/);
    expect(h).not.toContain('correct horse');
    expect(await verifyPassword('correct horse', h)).toBe(true);
    expect(await verifyPassword('correct horsf', h)).toBe(false);
    expect(await hashPassword('correct horse')).not.toBe(h);
    await expect(hashPassword('short')).rejects.toThrow(/at least 8/);
    expect(await verifyPassword('x', 'plain-text')).toBe(false);
    expect(await verifyPassword('x', 'scrypt$99999999$8$1$AA$AA')).toBe(false);
  });
});

describe('discovery', () => {
  test('with the authorization server off, no endpoint is advertised', () => {
    const c = smartConfiguration('https://x.example/fhir', false);
    expect(c.authorization_endpoint).toBeUndefined();
    expect(c.grant_types_supported).toEqual([]);
    const on = smartConfiguration('https://x.example/fhir', true);
    expect(on.token_endpoint).toBe('https://x.example/fhir/auth/token');
  });

  test('AUTH_SERVER follows AUTH and can be turned off; backend token lifetime at most 300 s', () => {
    expect(loadConfig({}).authServer).toBe(true);
    expect(loadConfig({ AUTH: 'off' }).authServer).toBe(false);
    expect(loadConfig({ AUTH_SERVER: 'off' }).authServer).toBe(false);
    expect(() => loadConfig({ AUTH_BACKEND_TOKEN_TTL: '301' })).toThrow(/^AUTH_BACKEND_TOKEN_TTL:/);
  });
});
