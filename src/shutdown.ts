// Graceful stop on SIGTERM/SIGINT for long-running commands (serve, worker): one stop, logged, then exit.
import type { Logger } from 'pino';

/** Runs `close` once on the first SIGTERM or SIGINT, logs the outcome and exits 0 (or 1 if closing failed). */
export function stopOnSignals(log: Logger, text: { stopping: string; stopped: string; failed: string }, close: () => Promise<unknown>): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, text.stopping);
    close().then(
      () => {
        log.info(text.stopped);
        process.exit(0);
      },
      (e: unknown) => {
        log.error({ err: { message: (e as Error)?.message } }, text.failed);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
