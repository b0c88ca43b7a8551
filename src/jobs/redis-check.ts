// BullMQ's requirements of Redis (docs.bullmq.io "Going to production"): `maxmemory-policy noeviction`,
// or Redis may evict queue keys under memory pressure and jobs vanish; and persistence (AOF or RDB
// snapshots), or a Redis restart loses every queued job. Checked at start, warned about, never fatal:
// a managed Redis may refuse CONFIG, and the jobs are idempotent and rescheduled anyway.
import { Redis } from 'ioredis';
import type { Logger } from 'pino';

export interface RedisCheck {
  /** maxmemory-policy as Redis reports it (undefined when it could not be read). */
  maxmemoryPolicy?: string;
  /** appendonly on (AOF). */
  aof?: boolean;
  /** RDB save points configured ("" = none; undefined when CONFIG is refused). */
  savePoints?: string;
  /** What is wrong, one line each. */
  problems: string[];
}

/** Parses INFO output into its fields. */
function infoFields(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return out;
}

/** Reads what BullMQ needs of the Redis at `url`; unreachable Redis is a problem too. */
export async function checkRedis(url: string, timeoutMs = 5000): Promise<RedisCheck> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: timeoutMs, enableOfflineQueue: false, retryStrategy: () => null });
  redis.on('error', () => undefined);
  const problems: string[] = [];
  try {
    await redis.connect();
    const info = infoFields(await redis.info());
    const policy = info.get('maxmemory_policy');
    const aof = info.get('aof_enabled') === '1';
    let savePoints: string | undefined;
    try {
      const r = (await redis.config('GET', 'save')) as string[];
      savePoints = (r[1] ?? '').trim();
    } catch {
      savePoints = undefined;
    }
    if (policy !== undefined && policy !== 'noeviction')
      problems.push(`Redis maxmemory-policy is ${policy}: BullMQ needs noeviction, or Redis may evict queued jobs under memory pressure`);
    if (!aof && savePoints === '')
      problems.push('Redis keeps nothing on disk (appendonly no and no save points): a Redis restart loses every queued job (they are rescheduled, but late)');
    return { ...(policy !== undefined ? { maxmemoryPolicy: policy } : {}), aof, ...(savePoints !== undefined ? { savePoints } : {}), problems };
  } catch (e) {
    problems.push(`Redis could not be checked: ${(e as Error)?.message ?? 'unknown error'}`);
    return { problems };
  } finally {
    redis.disconnect();
  }
}

/** Logs a warning for each problem of the Redis the queues use. */
export async function warnAboutRedis(url: string, log: Logger): Promise<RedisCheck> {
  const check = await checkRedis(url);
  for (const p of check.problems) log.warn({ redis: { maxmemoryPolicy: check.maxmemoryPolicy, aof: check.aof, savePoints: check.savePoints } }, p);
  return check;
}
