// Structured JSON logs. Never log resource content, query values or other PHI: log shapes (route
// templates, resource types, status codes, error codes) and request ids.
import { pino, type Logger } from 'pino';
import type { LogLevel } from '../config/config.js';

export type { Logger };

/**
 * The logger. `background`: lines are written to stdout asynchronously, so that lines logged while a
 * write is in flight go out together (the server's per-request lines cost a synchronous write each:
 * about 3 % of its CPU under load, issue 18's profile). Nothing waits for a buffer to fill: a line is
 * written as soon as the previous write ends, and pino writes what is pending when the process exits
 * (a SIGKILL loses at most the lines of one write in flight).
 */
export function createLogger(level: LogLevel, opts: { background?: boolean } = {}): Logger {
  const options = {
    level,
    base: { service: 'vesta' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['req.headers.authorization', 'headers.authorization', '*.authorization'], censor: '[redacted]' },
  };
  return opts.background ? pino(options, pino.destination({ dest: 1, sync: false })) : pino(options);
}
