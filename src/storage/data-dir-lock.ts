// One process per embedded data folder (issue 14 item 4): PGlite does not lock DATA_DIR itself, and
// two processes on one folder silently diverge. A lock file made with link(2) (atomic, fails if it
// exists) names the holder; a holder that is gone (pid dead, or pid reused by a later process) is stale.
import { linkSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export const LOCK_FILE = 'vesta.lock';

interface Holder {
  pid: number;
  /** Start time of the process in clock ticks since boot (/proc/<pid>/stat field 22), when known. */
  procStart?: string;
  startedAt: string;
  command: string;
  host: string;
  /** Distinguishes two lock files of the same process (re-opened after a close). */
  nonce: string;
}

/** Refusal to open a data folder another live process holds; the message is the one line to print. */
export class DataDirLockedError extends Error {
  readonly exitCode = 3;
  constructor(readonly dataDir: string, readonly holder: Holder) {
    super(
      `DATA_DIR ${dataDir} is in use by process ${holder.pid} (${holder.command}, started ${holder.startedAt}${holder.host !== hostname() ? ` on ${holder.host}` : ''}); ` +
        'stop that process first, or give this one another DATA_DIR',
    );
    this.name = 'DataDirLockedError';
  }
}

/** Field 22 of /proc/<pid>/stat (after the parenthesised command, which may hold spaces); undefined off Linux. */
function procStartOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function commandOf(pid: number): string | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    return argv.length ? describeArgv(argv) : undefined;
  } catch {
    return undefined;
  }
}

// Only the program and its first two arguments (e.g. "node vesta.js keys reseal"): later arguments
// may carry values an operator would not want in another process's error message.
function describeArgv(argv: string[]): string {
  return [basename(argv[0]), ...argv.slice(1, 4).map((a, i) => (i === 0 ? basename(a) : a))].join(' ').slice(0, 200);
}

function alive(h: Holder): boolean {
  // Another host's process cannot be checked from here: treat it as alive rather than steal its data.
  if (h.host !== hostname()) return true;
  if (!Number.isInteger(h.pid) || h.pid <= 0) return false;
  try {
    process.kill(h.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // The pid exists; it is the holder only if it started when the holder did (pids are reused).
  if (h.procStart === undefined) return true;
  const now = procStartOf(h.pid);
  return now === undefined || now === h.procStart;
}

function parse(text: string): Holder | undefined {
  try {
    const h = JSON.parse(text) as Holder;
    return typeof h.pid === 'number' && typeof h.nonce === 'string' ? h : undefined;
  } catch {
    return undefined;
  }
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export interface DataDirLock {
  readonly path: string;
  /** Removes the lock file if it is still this process's; idempotent. */
  release(): void;
}

/**
 * Takes the lock of `dataDir` (which must exist) for this process, or throws DataDirLockedError.
 * A stale lock is moved aside by rename and checked to be the very file judged stale before it is
 * deleted, so two processes taking over the same stale lock cannot both win.
 */
export function acquireDataDirLock(dataDir: string): DataDirLock {
  const path = join(dataDir, LOCK_FILE);
  const me: Holder = {
    pid: process.pid,
    ...(procStartOf(process.pid) !== undefined ? { procStart: procStartOf(process.pid) } : {}),
    startedAt: new Date(Date.now() - process.uptime() * 1000).toISOString(),
    command: describeArgv(process.argv),
    host: hostname(),
    nonce: randomBytes(12).toString('hex'),
  };
  const mine = JSON.stringify(me) + '\n';
  const tmp = `${path}.${process.pid}.${me.nonce}`;
  writeFileSync(tmp, mine, { mode: 0o644 });
  let held = false;
  try {
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        linkSync(tmp, path);
        held = true;
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const seen = readText(path);
      if (seen === undefined) continue; // released meanwhile: try again
      const holder = parse(seen);
      // A lock file cut short by a crash while it was written holds no live process.
      if (holder && alive(holder)) throw new DataDirLockedError(dataDir, { ...holder, command: commandOf(holder.pid) ?? holder.command });
      const aside = `${path}.stale.${process.pid}.${me.nonce}`;
      try {
        renameSync(path, aside);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // another process moved it first
        throw e;
      }
      const moved = readText(aside);
      if (moved === seen) {
        unlinkSync(aside);
        continue;
      }
      // Between our read and our rename another process replaced the stale lock with its own live
      // one: put it back (link fails rather than overwrite) and go round again to report it.
      try {
        linkSync(aside, path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      unlinkSync(aside);
    }
  } finally {
    unlinkSync(tmp);
  }
  if (!held) throw new Error(`could not take the lock ${path} (it kept changing)`);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.removeListener('exit', release);
    try {
      if (readText(path) === mine) unlinkSync(path);
    } catch {
      // Nothing to undo: a lock left behind is stale once this process is gone.
    }
  };
  // process.exit() skips asynchronous closes; the next start would still see the pid gone, but a
  // clean exit should leave no lock behind.
  process.on('exit', release);
  return { path, release };
}
