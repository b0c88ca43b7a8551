#!/usr/bin/env node
// SMART Backend Services, client side: prints an access token from Vesta's token endpoint.
//   node examples/backend-token.mjs keygen <name>          writes <name>.private.jwk.json and <name>.jwks.json (ES384)
//   node examples/backend-token.mjs token <base-url> <client-id> <name>.private.jwk.json "<scopes>"
// The client assertion (RFC 7523) has iss = sub = client id, aud = the token URL, a fresh jti and
// exp 4 minutes ahead, as SMART Backend Services requires.
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { exportJWK, generateKeyPair, importJWK, SignJWT } from 'jose';

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'keygen' && args[0]) {
  const { privateKey, publicKey } = await generateKeyPair('ES384', { extractable: true });
  const kid = `${args[0]}-${randomBytes(4).toString('hex')}`;
  writeFileSync(`${args[0]}.private.jwk.json`, JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: 'ES384' }, null, 2) + '\n', { mode: 0o600 });
  writeFileSync(`${args[0]}.jwks.json`, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES384', use: 'sig' }] }, null, 2) + '\n');
  process.stderr.write(`wrote ${args[0]}.private.jwk.json (keep it secret) and ${args[0]}.jwks.json (register it)\n`);
} else if (cmd === 'token' && args.length === 4) {
  const [base, clientId, keyFile, scope] = args;
  const jwk = JSON.parse(readFileSync(keyFile, 'utf8'));
  const config = await (await fetch(`${base}/.well-known/smart-configuration`)).json();
  const now = Math.floor(Date.now() / 1000);
  const assertion = await new SignJWT({})
    .setProtectedHeader({ alg: jwk.alg, kid: jwk.kid, typ: 'JWT' })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(config.token_endpoint)
    .setJti(randomBytes(16).toString('base64url'))
    .setIssuedAt(now)
    .setExpirationTime(now + 240)
    .sign(await importJWK(jwk, jwk.alg));
  const res = await fetch(config.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      scope,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    }),
  });
  const body = await res.json();
  if (!res.ok) {
    process.stderr.write(`token endpoint answered ${res.status}: ${JSON.stringify(body)}\n`);
    process.exit(1);
  }
  process.stdout.write(`${body.access_token}\n`);
  process.stderr.write(`scope "${body.scope}", expires in ${body.expires_in} s\n`);
} else {
  process.stderr.write('usage: backend-token.mjs keygen <name> | token <base-url> <client-id> <private-jwk-file> "<scopes>"\n');
  process.exit(2);
}
