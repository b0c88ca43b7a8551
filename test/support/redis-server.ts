// A Redis server of a test's own (redis-server from the machine, on a free port, in a temporary
// directory), for tests that need Redis settings the shared one does not have (persistence, an
// eviction policy) or that kill and restart Redis.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './backends.js';

export class TestRedis {
  private proc?: ChildProcess;
  readonly dir = mkdtempSync(join(tmpdir(), 'vesta-redis-'));

  private constructor(
    readonly port: number,
    private readonly args: string[],
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts redis-server with `args` (e.g. ['--appendonly', 'yes']) and waits until it answers PING. */
  static async start(args: string[] = []): Promise<TestRedis> {
    const r = new TestRedis(await freePort(), args);
    await r.restart();
    return r;
  }

  /** Starts it again (after stop or kill), with the same port, directory and settings. */
  async restart(): Promise<void> {
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--daemonize', 'no', ...this.args], { stdio: 'ignore' });
    const deadline = Date.now() + 10_000;
    for (;;) {
      const c = new Redis(this.url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
      c.on('error', () => undefined);
      try {
        await c.connect();
        // Loading an AOF: PING answers LOADING until the data is back.
        if ((await c.ping()) === 'PONG') return;
      } catch {
        if (Date.now() > deadline) throw new Error(`redis-server on port ${this.port} did not start`);
      } finally {
        c.disconnect();
      }
      await new Promise((res) => setTimeout(res, 50));
    }
  }

  /** SIGTERM: Redis shuts down cleanly (an AOF is flushed, save points are saved). */
  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((res) => p.once('exit', res));
    p.kill('SIGTERM');
    await exited;
  }

  /** SIGKILL: no shutdown save; what survives is what the AOF already holds. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((res) => p.once('exit', res));
    p.kill('SIGKILL');
    await exited;
  }

  async close(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
