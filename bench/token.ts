// Backend Services token issuance (issue 15): POST [base]/auth/token with grant_type=client_credentials
// and a private_key_jwt client assertion (RFC 7523, ES384), at concurrency 1 and 8, a fixed number of
// requests per round. The assertions of a round are signed before it starts (the client's signing is
// not timed); each is fresh (own jti), as the server accepts a jti once. The ceiling, alternating with
// them: the ES256 access tokens per second jose's SignJWT makes in this process, one at a time, with the
// server's active key and the claims of a token the server issued (the server's signing alone).
import { randomBytes } from 'node:crypto';
import { Agent, request } from 'node:http';
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, importJWK, SignJWT, type JWTHeaderParameters } from 'jose';
import { addClient } from '../src/auth-server/admin.js';
import type { SigningRingFile } from '../src/auth/signing-keys.js';
import { openDatabase } from '../src/storage/db.js';
import { median, percentile } from './load.js';

/** non200: answers other than 200, and requests without an answer (status 0). */
export interface TokenRun { concurrency: number; tokensPerSecond: number; p50: number; p95: number; p99: number; non200: number; ratio: number }
export interface TokenResult {
  requestsPerRound: number;
  rounds: number;
  assertions: string;
  runs: TokenRun[];
  ceiling: { what: string; tokensPerSecond: number; claimsBytes: number; tokenBytes: number };
  failures: string[];
}

const CLIENT = 'vesta-bench-backend';
const SCOPE = 'system/*.rs';
const round1 = (x: number) => Math.round(x * 10) / 10;

function post(agent: Agent, url: URL, form: string): Promise<{ status: number; body: string; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request({ agent, host: url.hostname, port: url.port, method: 'POST', path: url.pathname, headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(form), Accept: 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
    });
    req.on('error', reject);
    req.end(form);
  });
}

export async function tokenBench(o: { baseUrl: string; databaseUrl: string; ring: SigningRingFile; requests: number; rounds: number; seconds: number; log: (m: string) => void }): Promise<TokenResult> {
  const tokenUrl = new URL(`${o.baseUrl}/auth/token`);
  const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
  const kid = `bench-${randomBytes(4).toString('hex')}`;
  const db = openDatabase({ databaseUrl: o.databaseUrl, poolMax: 1 });
  try {
    await addClient(db.knex, { client_id: CLIENT, type: 'confidential-asymmetric', redirect_uris: [], scope: SCOPE, jwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] } }, { allowLoopbackJwksUri: false });
  } finally {
    await db.close();
  }
  const sign = (now: number) =>
    new SignJWT({}).setProtectedHeader({ alg: 'ES384', kid, typ: 'JWT' }).setIssuer(CLIENT).setSubject(CLIENT).setAudience(tokenUrl.href).setJti(randomBytes(16).toString('base64url')).setIssuedAt(now).setExpirationTime(now + 240).sign(privateKey);
  /** n fresh assertions, signed now (before the timed loop), as form bodies. */
  const presign = async (n: number) => {
    const now = Math.floor(Date.now() / 1000);
    const out: string[] = [];
    for (let i = 0; i < n; i += 256) out.push(...(await Promise.all(Array.from({ length: Math.min(256, n - i) }, () => sign(now)))));
    return out.map((a) => new URLSearchParams({ grant_type: 'client_credentials', scope: SCOPE, client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: a }).toString());
  };
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const failures: string[] = [];
  /** Posts every form at `conc` in flight; returns tokens/s, sorted latencies, non-200 count and one issued token. */
  const drive = async (forms: string[], conc: number) => {
    const lat: number[] = [];
    let next = 0;
    let non200 = 0;
    let token = '';
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: conc }, async () => {
        while (next < forms.length) {
          // A dropped connection counts (and is printed) with the non-200 answers, as status 0.
          const r = await post(agent, tokenUrl, forms[next++]).catch((e: Error) => ({ status: 0, body: `no answer: ${e.message}`, ms: NaN }));
          if (r.status) lat.push(r.ms);
          if (r.status !== 200) {
            non200++;
            if (failures.length < 10) failures.push(`${r.status} ${r.body.slice(0, 300)}`);
          } else if (!token) token = (JSON.parse(r.body) as { access_token: string }).access_token;
        }
      }),
    );
    const s = (performance.now() - t0) / 1000;
    lat.sort((a, b) => a - b);
    return { rps: forms.length / s, lat, non200, token };
  };
  // Unmeasured warm-up (JIT, pool, the client's registration); its token gives the ceiling's claims.
  const warm = await drive(await presign(200), 8);
  if (!warm.token) throw new Error(`token bench: no token issued in the warm-up: ${failures.join(' | ')}`);
  if (warm.non200) o.log(`bench: token warm-up: ${warm.non200} non-200: ${failures.join(' | ')}\n`);
  failures.length = 0;
  const issuedHeader = decodeProtectedHeader(warm.token) as JWTHeaderParameters;
  const issued = decodeJwt(warm.token);
  const ringKey = o.ring.keys.find((k) => k.kid === o.ring.active)!;
  const serverKey = await importJWK(ringKey, ringKey.alg);
  if (issuedHeader.alg !== 'ES256' || issuedHeader.kid !== ringKey.kid) throw new Error(`token bench: the issued token is ${issuedHeader.alg} ${issuedHeader.kid}, not the ring's active ES256 key`);
  const ceilingToken = () => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ ...issued, jti: randomBytes(Math.max(1, Math.round(((issued.jti?.length ?? 22) * 3) / 4))).toString('base64url'), iat: now, exp: now + (issued.exp! - issued.iat!) }).setProtectedHeader(issuedHeader).sign(serverKey);
  };
  const figs: Record<number, { rps: number; p50: number; p95: number; p99: number; non200: number }[]> = { 1: [], 8: [] };
  const ceil: number[] = [];
  let lastCeiling = '';
  for (let r = 0; r < o.rounds; r++) {
    for (const conc of [1, 8]) {
      const forms = await presign(o.requests);
      const d = await drive(forms, conc);
      figs[conc].push({ rps: d.rps, p50: percentile(d.lat, 50), p95: percentile(d.lat, 95), p99: percentile(d.lat, 99), non200: d.non200 });
      o.log(`bench: token round ${r + 1}, concurrency ${conc}: ${Math.round(d.rps)} tokens/s, ${d.non200} non-200\n`);
    }
    // Ceiling: sequential SignJWT for `seconds`, one token at a time.
    let n = 0;
    const t0 = performance.now();
    const until = t0 + o.seconds * 1000;
    while (performance.now() < until) {
      lastCeiling = await ceilingToken();
      n++;
    }
    ceil.push(n / ((performance.now() - t0) / 1000));
  }
  agent.destroy();
  const ceiling = median(ceil);
  return {
    requestsPerRound: o.requests,
    rounds: o.rounds,
    assertions: 'ES384, pre-signed before each timed loop (client signing not timed), one fresh jti per request',
    runs: [1, 8].map((c) => {
      const f = figs[c];
      const rps = median(f.map((x) => x.rps));
      return { concurrency: c, tokensPerSecond: round1(rps), p50: round1(median(f.map((x) => x.p50))), p95: round1(median(f.map((x) => x.p95))), p99: round1(median(f.map((x) => x.p99))), non200: f.reduce((a, x) => a + x.non200, 0), ratio: Math.round((rps / ceiling) * 1000) / 1000 };
    }),
    ceiling: { what: 'jose SignJWT ES256 with the server key, in-process, one at a time, claims of an issued token', tokensPerSecond: round1(ceiling), claimsBytes: JSON.stringify(issued).length, tokenBytes: lastCeiling.length },
    failures,
  };
}
