// Planner statistics right after large writes (issue 14 item 3): autovacuum's ANALYZE comes a minute or
// more after a bulk load, and until then chain/_has/sort plans are built on no statistics at all. After
// writes, the tables that changed by more than a threshold are analyzed here, in the background.
import type { Knex } from 'knex';
import { INDEX_TABLES } from '../search/index-rows.js';

/** PostgreSQL's longest delay before a backend's activity counts reach pg_stat (10 s), with a margin. */
const STATS_FLUSH_MS = 11_000;

/** The tables searches read: the resource rows and every index table. */
export const SEARCHED_TABLES: readonly string[] = ['resource', 'resource_history', ...Object.values(INDEX_TABLES), 'idx_blind'];

export interface PlannerStatsOptions {
  kind: 'pg' | 'embedded';
  /** Rows changed in a table since its last ANALYZE that make it stale (and at least 10% of its rows). */
  threshold: number;
  /** Quiet time after the last write before analyzing, so a load is analyzed once, not per Bundle. */
  debounceMs: number;
  /** Longest wait during an unbroken stream of writes: a long load gets statistics along the way. */
  maxWaitMs: number;
  log: { info(o: object, m: string): void; warn(o: object, m: string): void };
}

interface TableState {
  name: string;
  reltuples: number;
  relpages: number;
  pages: number;
  mods: number | null;
}

/** The tables among `tables` whose statistics are stale by the rule of PlannerStatsOptions.threshold. */
export async function staleTables(knex: Knex, kind: 'pg' | 'embedded', tables: readonly string[], threshold: number): Promise<string[]> {
  const r = (await knex.raw(
    `select c.relname as name, c.reltuples::float8 as reltuples, c.relpages::int as relpages,
            (pg_relation_size(c.oid) / current_setting('block_size')::int)::int as pages, s.n_mod_since_analyze::int as mods
       from pg_class c left join pg_stat_user_tables s on s.relid = c.oid
      where c.relkind = 'r' and c.relnamespace = current_schema()::regnamespace and c.relname = any(?)`,
    [tables as string[]],
  )) as { rows: TableState[] };
  return r.rows
    .filter((t) => {
      // PGlite keeps no activity statistics (n_mod_since_analyze stays 0): there, growth of the table
      // since the last ANALYZE, in pages at the density it measured (or a guess), stands for changes.
      const changed =
        kind === 'pg' && t.mods !== null ? t.mods : Math.max(0, t.pages - Math.max(t.relpages, 0)) * (t.relpages > 0 && t.reltuples > 0 ? t.reltuples / t.relpages : 40);
      return changed >= threshold && changed >= 0.1 * Math.max(t.reltuples, 0);
    })
    .map((t) => t.name);
}

/** ANALYZE of the named tables, one statement each (a failure on one does not skip the others). */
export async function analyzeTables(knex: Knex, tables: readonly string[]): Promise<string[]> {
  const done: string[] = [];
  for (const t of tables) {
    if (!/^[a-z_]+$/.test(t)) continue; // names come from the catalogue; never splice anything else
    await knex.raw(`analyze ${t}`);
    done.push(t);
  }
  return done;
}

/**
 * Debounced, one-at-a-time ANALYZE of the stale searched tables after writes. poke() is cheap and
 * never throws; the work runs on its own pooled connection, never in a request's transaction, and
 * its errors are only logged.
 */
export class PlannerStats {
  private timer: NodeJS.Timeout | undefined;
  /** The second look on pg, once every writer's activity counts have reached pg_stat (see poke). */
  private followUp: NodeJS.Timeout | undefined;
  private firstPoke = 0;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  /** Completed runs and the tables they analyzed (for logs and tests). */
  readonly history: { at: number; tables: string[] }[] = [];
  private waiters: (() => void)[] = [];

  constructor(private readonly knex: Knex, private readonly opts: PlannerStatsOptions) {}

  /** A write finished: check the tables once writes have paused (or maxWaitMs has passed). */
  poke(): void {
    if (this.closed || this.opts.threshold <= 0) return;
    const now = Date.now();
    if (!this.timer) this.firstPoke = now;
    else clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(this.opts.debounceMs, this.firstPoke + this.opts.maxWaitMs - now));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.run();
    }, wait);
    this.timer.unref();
    // A PostgreSQL backend flushes its change counts to pg_stat_user_tables at most once a second, and
    // an idle one up to 10 s after its last transaction (PGSTAT_IDLE_INTERVAL): the check above can see
    // a load only in part. One more check after that window catches the rest (one catalogue query).
    if (this.opts.kind === 'pg') {
      if (this.followUp) clearTimeout(this.followUp);
      this.followUp = setTimeout(() => {
        this.followUp = undefined;
        this.run();
      }, wait + STATS_FLUSH_MS);
      this.followUp.unref();
    }
  }

  private run(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      try {
        const stale = await staleTables(this.knex, this.opts.kind, SEARCHED_TABLES, this.opts.threshold);
        if (stale.length && !this.closed) {
          const t0 = Date.now();
          const done = await analyzeTables(this.knex, stale);
          this.history.push({ at: Date.now(), tables: done });
          this.opts.log.info({ tables: done, ms: Date.now() - t0 }, 'planner statistics refreshed after writes');
        }
      } catch (e) {
        this.opts.log.warn({ err: { message: (e as Error)?.message, code: (e as { code?: string })?.code } }, 'planner statistics refresh failed');
      } finally {
        this.running = undefined;
        if (this.again && !this.closed) {
          this.again = false;
          this.run();
        } else if (!this.timer && !this.followUp) {
          for (const w of this.waiters.splice(0)) w();
        }
      }
    })();
  }

  /** Resolves when no check is pending or running (a check requested meanwhile is waited for too). */
  idle(): Promise<void> {
    if (!this.timer && !this.followUp && !this.running) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Stops new checks and waits for a running one (before the pool closes). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.followUp) clearTimeout(this.followUp);
    this.timer = undefined;
    this.followUp = undefined;
    await this.running;
    for (const w of this.waiters.splice(0)) w();
  }
}
