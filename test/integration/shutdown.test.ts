// Graceful shutdown: close() stops accepting, lets an in-flight request finish, then closes the pool.
import { describe, expect, test } from '@jest/globals';
import { request as httpRequest } from 'node:http';
import { startTestServer } from '../support/backends.js';

describe('graceful shutdown', () => {
  test('an in-flight request completes while the server closes; new connections are refused', async () => {
    const t = await startTestServer('embedded');
    const url = new URL(t.url);
    const body = JSON.stringify({ resourceType: 'Basic', code: { text: 'in flight' } });
    const status = new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        { host: url.hostname, port: url.port, path: '/Basic', method: 'POST', headers: { 'Content-Type': 'application/fhir+json', 'Content-Length': Buffer.byteLength(body), Authorization: `Bearer ${t.token}` } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.write(body.slice(0, 10));
      setTimeout(() => req.end(body.slice(10)), 300);
    });
    await new Promise((r) => setTimeout(r, 100));
    const closing = t.close();
    await new Promise((r) => setTimeout(r, 50));
    await expect(fetch(`${t.url}/metadata`)).rejects.toThrow();
    expect(await status).toBe(201);
    await closing;
  });
});
