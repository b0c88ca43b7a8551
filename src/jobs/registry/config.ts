// Immunization registries (IIS) Vesta syncs with, as configuration (issue 17): a JSON file, an array
// of registries, checked at start with every problem reported on a line of its own. Authorization is
// SMART Backend Services (hl7.org/fhir/smart-app-launch/backend-services.html) or none.
import { createPrivateKey, createPublicKey, sign, verify, webcrypto, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { CronExpressionParser } from 'cron-parser';
import { dirname, resolve } from 'node:path';

export type RegistryDirection = 'push' | 'pull' | 'both';
export type RegistryAlg = 'ES384' | 'RS384' | 'ES256' | 'RS256';

export interface BackendServicesAuth {
  type: 'backend-services';
  tokenUrl: string;
  clientId: string;
  /** Absolute path of the private JWK (a relative one in the file is taken from the file's folder). */
  privateKeyFile: string;
  /** The JWK's kid, sent in the client assertion's header. */
  kid: string;
  alg: RegistryAlg;
  scope: string;
  /** The private key, read and checked at load. A KeyObject prints and serializes as nothing. */
  privateKey: KeyObject;
}

export type RegistryAuth = { type: 'none' } | BackendServicesAuth;

export type RegistrySchedule = { everySeconds: number } | { cron: string };

export interface RegistryConfig {
  id: string;
  /** FHIR base URL without a trailing slash. */
  baseUrl: string;
  auth: RegistryAuth;
  direction: RegistryDirection;
  schedule: RegistrySchedule;
  pageSize: number;
  requestTimeoutMs: number;
  rateLimit: { requests: number; perSeconds: number };
  /** What identifies a patient at this registry (Patient.identifier.system). */
  patientIdentifierSystem: string;
  breaker: { failures: number; cooldownSeconds: number };
  retry: { attempts: number; baseDelayMs: number; maxDelayMs: number };
  /** Failed attempts on one record before it goes to the dead-letter list. */
  deadLetterAfter: number;
}

/** Everything wrong with a registry file, one line per problem (`problems`), all of them in the message. */
export class RegistryConfigError extends Error {
  constructor(readonly file: string, readonly problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'RegistryConfigError';
  }
}

export const DEFAULT_REGISTRY_SCOPE = 'system/Immunization.cruds system/Patient.crus';
const ALGS: readonly RegistryAlg[] = ['ES384', 'RS384', 'ES256', 'RS256'];
const ID = /^[a-z0-9-]{1,40}$/;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A value from the file, short enough for one line (the file holds no secrets; key files are never quoted). */
function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

/**
 * The keys of one JSON object, read once each; whatever was not read is reported as unknown, with
 * the nearest known key, because a misspelt optional key would otherwise fall back to its default.
 */
class Fields {
  private readonly read = new Set<string>();
  constructor(
    private readonly obj: Obj,
    private readonly path: string,
    private readonly problem: (line: string) => void,
  ) {}

  name(key: string): string {
    return `${this.path}${key}`;
  }

  get(key: string): unknown {
    this.read.add(key);
    return this.obj[key];
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined;
  }

  fail(key: string, message: string): undefined {
    this.problem(`${this.name(key)} ${message}`);
    return undefined;
  }

  /** A problem with the object as a whole. */
  failWhole(message: string): undefined {
    this.problem(`${this.path.replace(/\.$/, '')} ${message}`);
    return undefined;
  }

  int(key: string, def: number | undefined, min: number, max: number): number | undefined {
    const v = this.get(key);
    if (v === undefined) return def ?? this.fail(key, `is required (an integer from ${min} to ${max})`);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) return this.fail(key, `must be an integer from ${min} to ${max}, got ${shown(v)}`);
    return v;
  }

  str(key: string, required: boolean): string | undefined {
    const v = this.get(key);
    if (v === undefined) return required ? this.fail(key, 'is required') : undefined;
    // Control characters would let a value forge log lines or HTTP headers.
    if (typeof v !== 'string' || !v.trim() || /[\u0000-\u001f\u007f]/.test(v)) return this.fail(key, `must be a non-empty string without control characters, got ${shown(v)}`);
    return v;
  }

  oneOf<T extends string>(key: string, values: readonly T[], def?: T): T | undefined {
    const v = this.get(key);
    if (v === undefined) return def ?? this.fail(key, `is required (${values.join(', ')})`);
    if (!values.includes(v as T)) return this.fail(key, `must be one of ${values.join(', ')}, got ${shown(v)}`);
    return v as T;
  }

  /** A nested object (undefined when absent and optional). */
  object(key: string, required: boolean): Fields | undefined {
    const v = this.get(key);
    if (v === undefined) return required ? this.fail(key, 'is required') : undefined;
    if (!isObj(v)) return this.fail(key, `must be an object, got ${shown(v)}`);
    return new Fields(v, `${this.name(key)}.`, this.problem);
  }

  /** Reports the keys nothing read. */
  done(): void {
    for (const k of Object.keys(this.obj)) {
      if (this.read.has(k)) continue;
      const near = [...this.read].map((r) => ({ r, d: r.toLowerCase() === k.toLowerCase() ? 0 : distance(r, k) })).sort((a, b) => a.d - b.d)[0];
      this.problem(`${this.name(k)} is not a known setting${near && near.d <= 2 ? ` (did you mean "${near.r}"?)` : ''}`);
    }
  }
}

function loopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** https, or http only on a loopback host (tests and local registries); no credentials or fragment in it. */
function endpoint(f: Fields, key: string, allowQuery: boolean): string | undefined {
  const raw = f.str(key, true);
  if (raw === undefined) return undefined;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return f.fail(key, `is not a URL: ${shown(raw)}`);
  }
  // Credentials in a URL end up in logs and error messages (checked first: later lines quote the URL).
  if (u.username || u.password) return f.fail(key, 'must not carry a user name or password');
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && loopback(u.hostname))) return f.fail(key, `must use https (http only on a loopback host), got ${shown(raw)}`);
  if (u.hash) return f.fail(key, 'must not carry a fragment');
  if (u.search && !allowQuery) return f.fail(key, 'must not carry a query');
  return allowQuery ? u.toString() : `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
}

const CRON_FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'] },
  { name: 'day of week', min: 0, max: 7, names: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] },
] as const;

/** Why a 5-field cron expression (minute hour day-of-month month day-of-week) is invalid, or undefined. */
export function cronProblem(expr: string): string | undefined {
  const fields = expr.trim().split(/\s+/);
  if (fields.length !== 5) return `must have 5 fields (minute hour day-of-month month day-of-week), got ${fields.length}`;
  for (let i = 0; i < 5; i++) {
    const spec = CRON_FIELDS[i];
    const names: readonly string[] = 'names' in spec ? spec.names : [];
    const value = (s: string): number | undefined => {
      if (/^\d+$/.test(s)) {
        const n = Number(s);
        return n >= spec.min && n <= spec.max ? n : undefined;
      }
      const k = names.indexOf(s.toLowerCase());
      return k < 0 ? undefined : k + (spec.min === 1 ? 1 : 0);
    };
    for (const item of fields[i].split(',')) {
      const m = /^(\*|([^-/]+)(?:-([^-/]+))?)(?:\/(\d+))?$/.exec(item);
      const bad = `${spec.name} field ${shown(fields[i])} is invalid (${spec.min}-${spec.max}${names.length ? ' or names' : ''}, *, ranges, lists, /steps)`;
      if (!m) return bad;
      if (m[4] !== undefined && Number(m[4]) < 1) return bad;
      if (m[1] === '*') continue;
      const from = value(m[2]);
      const to = m[3] === undefined ? from : value(m[3]);
      if (from === undefined || to === undefined || from > to) return bad;
    }
  }
  // The scheduler reads it with cron-parser: what it cannot read never reaches a timer.
  try {
    CronExpressionParser.parse(fields.join(' '), { tz: 'UTC' });
  } catch (e) {
    return `is not understood by the scheduler (${String((e as Error)?.message).slice(0, 80)})`;
  }
  return undefined;
}

function schedule(f: Fields): RegistrySchedule | undefined {
  const s = f.object('schedule', true);
  if (!s) return undefined;
  const every = s.has('everySeconds');
  const cron = s.has('cron');
  let out: RegistrySchedule | undefined;
  if (every === cron) {
    s.get('everySeconds');
    s.get('cron');
    s.failWhole('needs exactly one of everySeconds or cron');
  }
  else if (every) {
    const n = s.int('everySeconds', undefined, 10, 31 * 86400);
    if (n !== undefined) out = { everySeconds: n };
  } else {
    const c = s.str('cron', true);
    const why = c === undefined ? undefined : cronProblem(c);
    if (why) s.fail('cron', why);
    else if (c !== undefined) out = { cron: c.trim().split(/\s+/).join(' ') };
  }
  s.done();
  return out;
}

function uri(f: Fields, key: string): string | undefined {
  const v = f.str(key, true);
  if (v === undefined) return undefined;
  if (!/^[a-z][a-z0-9+.-]*:\S+$/i.test(v)) return f.fail(key, `must be an absolute URI (https://..., urn:oid:...), got ${shown(v)}`);
  return v;
}

interface LoadedKey {
  key: KeyObject;
  kid: string;
  kty: 'EC' | 'RSA';
  crv?: 'P-256' | 'P-384';
  alg?: RegistryAlg;
}

/**
 * Reads and checks a private JWK. Problems name the file and what is wrong, never a key value
 * (JSON.parse and node:crypto messages can quote the input, so they are not passed on).
 */
function loadKey(file: string, problem: (message: string) => void): LoadedKey | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    problem(`cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    return undefined;
  }
  let jwk: unknown;
  try {
    jwk = JSON.parse(text);
  } catch {
    problem('is not valid JSON');
    return undefined;
  }
  if (!isObj(jwk)) return void problem('must hold one JWK (a JSON object)');
  if ('keys' in jwk) return void problem('holds a key set; it must hold the one private JWK');
  const { kty, crv, kid, alg, use } = jwk;
  if (kty !== 'EC' && kty !== 'RSA') return void problem(`must be an EC (P-384, P-256) or RSA key, got kty ${shown(kty)}`);
  if (kty === 'EC' && crv !== 'P-384' && crv !== 'P-256') return void problem(`must be an EC key on P-384 or P-256, got crv ${shown(crv)}`);
  if (jwk.d === undefined) return void problem('holds a public key; the private key (with "d") is needed');
  if (typeof kid !== 'string' || !kid.trim() || /[\u0000-\u001f\u007f]/.test(kid)) return void problem('needs a "kid" (sent in the assertion header, the registry finds the public key by it)');
  if (alg !== undefined && !ALGS.includes(alg as RegistryAlg)) return void problem(`has alg ${shown(alg)}; allowed: ${ALGS.join(', ')}`);
  if (use !== undefined && use !== 'sig') return void problem(`has use ${shown(use)}; a signing key ("sig") is needed`);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch {
    return void problem('is not a usable private key (a field is missing or malformed)');
  }
  if (kty === 'RSA' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) return void problem('is an RSA key shorter than 2048 bits');
  // A key whose public half does not match its private half signs assertions no registry accepts.
  const probe = Buffer.from('vesta registry key check');
  const signature = sign('sha384', probe, key);
  if (!verify('sha384', probe, createPublicKey(key), signature)) return void problem("is inconsistent: its public part does not match its private part");
  return { key, kid, kty, ...(kty === 'EC' ? { crv: crv as 'P-256' | 'P-384' } : {}), ...(alg !== undefined ? { alg: alg as RegistryAlg } : {}) };
}

function algFits(alg: RegistryAlg, k: LoadedKey): boolean {
  if (alg === 'ES384') return k.crv === 'P-384';
  if (alg === 'ES256') return k.crv === 'P-256';
  return k.kty === 'RSA';
}

function auth(f: Fields, configDir: string): RegistryAuth | undefined {
  const a = f.object('auth', true);
  if (!a) return undefined;
  const type = a.oneOf('type', ['none', 'backend-services'] as const);
  if (type !== 'backend-services') {
    a.done();
    return type === 'none' ? { type: 'none' } : undefined;
  }
  const tokenUrl = endpoint(a, 'tokenUrl', true);
  const clientId = a.str('clientId', true);
  const scope = a.str('scope', false) ?? DEFAULT_REGISTRY_SCOPE;
  const algRaw = a.get('alg');
  const alg = algRaw === undefined ? undefined : a.oneOf('alg', ALGS);
  const file = a.str('privateKeyFile', true);
  a.done();
  // The key is checked even when other settings are wrong, so one run reports every problem.
  const path = file === undefined ? undefined : resolve(configDir, file);
  const k = path === undefined ? undefined : loadKey(path, (m) => a.fail('privateKeyFile', `${shown(path)} ${m}`));
  if (!k || !path || (algRaw !== undefined && alg === undefined)) return undefined;
  if (alg && k.alg && alg !== k.alg) return a.fail('alg', `is ${alg} but the key in ${shown(path)} is for ${k.alg}`);
  const chosen = alg ?? k.alg ?? (k.kty === 'RSA' ? 'RS384' : k.crv === 'P-256' ? 'ES256' : 'ES384');
  if (!algFits(chosen, k)) return a.fail(alg ? 'alg' : 'privateKeyFile', `${alg ? 'is' : 'names a key for'} ${chosen}, which does not fit the key in ${shown(path)} (${k.kty}${k.crv ? ` ${k.crv}` : ''})`);
  if (tokenUrl === undefined || clientId === undefined) return undefined;
  return { type: 'backend-services', tokenUrl, clientId, privateKeyFile: path, kid: k.kid, alg: chosen, scope: scope.trim().split(/\s+/).join(' '), privateKey: k.key };
}

function registry(f: Fields, configDir: string): RegistryConfig | undefined {
  const id = f.get('id');
  if (id === undefined) f.fail('id', 'is required (1 to 40 characters of a-z, 0-9 and -)');
  else if (typeof id !== 'string' || !ID.test(id)) f.fail('id', `must be 1 to 40 characters of a-z, 0-9 and -, got ${shown(id)}`);
  const baseUrl = endpoint(f, 'baseUrl', false);
  const a = auth(f, configDir);
  const direction = f.oneOf('direction', ['push', 'pull', 'both'] as const);
  const sched = schedule(f);
  const pageSize = f.int('pageSize', 100, 1, 1000);
  const requestTimeoutMs = f.int('requestTimeoutMs', 10000, 100, 120000);
  const rl = f.object('rateLimit', false);
  const rateLimit = { requests: rl ? rl.int('requests', 10, 1, 10000) : 10, perSeconds: rl ? rl.int('perSeconds', 1, 1, 3600) : 1 };
  rl?.done();
  const patientIdentifierSystem = uri(f, 'patientIdentifierSystem');
  const br = f.object('breaker', false);
  const breaker = { failures: br ? br.int('failures', 5, 1, 1000) : 5, cooldownSeconds: br ? br.int('cooldownSeconds', 60, 1, 86400) : 60 };
  br?.done();
  const rt = f.object('retry', false);
  const retry = {
    attempts: rt ? rt.int('attempts', 5, 1, 100) : 5,
    baseDelayMs: rt ? rt.int('baseDelayMs', 500, 1, 600000) : 500,
    maxDelayMs: rt ? rt.int('maxDelayMs', 60000, 1, 3600000) : 60000,
  };
  if (rt && retry.baseDelayMs !== undefined && retry.maxDelayMs !== undefined && retry.maxDelayMs < retry.baseDelayMs)
    rt.fail('maxDelayMs', `(${retry.maxDelayMs}) must not be below baseDelayMs (${retry.baseDelayMs})`);
  rt?.done();
  const deadLetterAfter = f.int('deadLetterAfter', 5, 1, 1000);
  f.done();
  const parts = [id, baseUrl, a, direction, sched, pageSize, requestTimeoutMs, patientIdentifierSystem, deadLetterAfter, ...Object.values(rateLimit), ...Object.values(breaker), ...Object.values(retry)];
  if (parts.some((p) => p === undefined)) return undefined;
  return {
    id: id as string,
    baseUrl: baseUrl!,
    auth: a!,
    direction: direction!,
    schedule: sched!,
    pageSize: pageSize!,
    requestTimeoutMs: requestTimeoutMs!,
    rateLimit: rateLimit as RegistryConfig['rateLimit'],
    patientIdentifierSystem: patientIdentifierSystem!,
    breaker: breaker as RegistryConfig['breaker'],
    retry: retry as RegistryConfig['retry'],
    deadLetterAfter: deadLetterAfter!,
  };
}

/** Freezes plain objects and arrays all the way down (the KeyObject is left as node:crypto made it). */
function deepFreeze<T>(o: T): T {
  const plain = Array.isArray(o) || (isObj(o) && Object.getPrototypeOf(o) === Object.prototype);
  if (!plain) return o;
  for (const v of Object.values(o as object)) deepFreeze(v);
  return Object.freeze(o);
}

/**
 * Reads the registry file (a JSON array of registries) and returns them checked, with defaults applied
 * and frozen; throws one RegistryConfigError listing every problem, each line prefixed with the
 * registry's id (or its index when the id itself is unusable).
 */
export function loadRegistries(path: string): RegistryConfig[] {
  let list: unknown;
  try {
    list = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RegistryConfigError(path, [code ? `${path}: cannot be read (${code})` : `${path}: is not valid JSON (${(e as Error).message})`]);
  }
  if (!Array.isArray(list)) throw new RegistryConfigError(path, [`${path}: must be a JSON array of registries`]);
  const problems: string[] = [];
  const out: RegistryConfig[] = [];
  const firstIndex = new Map<string, number>();
  list.forEach((entry, i) => {
    const id = isObj(entry) ? entry.id : undefined;
    const prefix = typeof id === 'string' && ID.test(id) ? `registry "${id}"` : `registry [${i}]`;
    if (!isObj(entry)) return void problems.push(`${prefix}: must be an object, got ${shown(entry)}`);
    if (typeof id === 'string' && ID.test(id)) {
      const first = firstIndex.get(id);
      if (first !== undefined) problems.push(`${prefix}: id is used by more than one registry ([${first}] and [${i}])`);
      else firstIndex.set(id, i);
    }
    const r = registry(new Fields(entry, '', (line) => problems.push(`${prefix}: ${line}`)), dirname(resolve(path)));
    if (r) out.push(r);
  });
  if (problems.length) throw new RegistryConfigError(path, problems);
  return deepFreeze(out);
}

/**
 * The registry key as WebCrypto wants it for a client assertion (openid-client's PrivateKeyJwt takes
 * `{ key, kid }`; the algorithm is read from the key, so it carries the configured hash).
 */
export async function registrySigningKey(a: BackendServicesAuth): Promise<{ key: webcrypto.CryptoKey; kid: string }> {
  const jwk = a.privateKey.export({ format: 'jwk' });
  const algorithm = a.alg.startsWith('ES')
    ? { name: 'ECDSA', namedCurve: a.alg === 'ES256' ? 'P-256' : 'P-384' }
    : { name: 'RSASSA-PKCS1-v1_5', hash: a.alg === 'RS256' ? 'SHA-256' : 'SHA-384' };
  const key = await webcrypto.subtle.importKey('jwk', jwk, algorithm, false, ['sign']);
  return { key, kid: a.kid };
}
