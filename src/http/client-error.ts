// Answers for requests the HTTP parser refuses before Express sees them (Node's 'clientError' event):
// an oversized request line is a 414, oversized headers a 431 (RFC 9110 §15.5.15, RFC 6585 §5),
// as an OperationOutcome instead of Node's bare status line or a reset.
import { maxHeaderSize } from 'node:http';
import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ERROR_CATALOGUE, type ErrorCode } from '../fhir/errors.js';
import { operationOutcome, outcomeId } from '../fhir/outcome.js';

const REASONS: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 414: 'URI Too Long', 431: 'Request Header Fields Too Large' };

interface ParserError extends Error {
  code?: string;
  rawPacket?: Buffer;
}

/**
 * Node reports one HPE_HEADER_OVERFLOW for a long URL and for long headers alike (its limit covers
 * the request line plus headers). When the failing chunk starts with the request line and that line
 * alone reaches the limit, the URL is the culprit; otherwise the headers (or both) are.
 */
function classify(err: ParserError, limit: number): { code: ErrorCode; message: string } {
  if (err.code === 'HPE_HEADER_OVERFLOW') {
    const raw = err.rawPacket;
    if (raw && /^[A-Z]{3,10} /.test(raw.subarray(0, 11).toString('latin1'))) {
      const eol = raw.indexOf('\r\n');
      if (eol < 0 || eol >= limit) return { code: 'uri-too-long', message: `the request URL exceeds the server's limit of ${limit} bytes for the request line and headers` };
    }
    return { code: 'headers-too-large', message: `the request URL and headers together exceed the server's limit of ${limit} bytes` };
  }
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return { code: 'request-timeout', message: 'the request was not received in time' };
  return { code: 'invalid-request', message: 'the HTTP request is malformed' };
}

/** Hooks the server's clientError event; the answer closes the connection, as the parser state is lost. */
export function answerClientErrors(server: Server, log: Logger): void {
  server.on('clientError', (err: ParserError, socket: Duplex) => {
    // Nothing useful can be written to a reset socket, or in the middle of a response already started.
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    const { code, message } = classify(err, (server as Server & { maxHeaderSize?: number }).maxHeaderSize ?? maxHeaderSize);
    const { status, issue } = ERROR_CATALOGUE[code];
    log.info({ status, parserCode: err.code }, 'request refused by the HTTP parser');
    const body = JSON.stringify(operationOutcome([{ severity: 'error', code: issue, diagnostics: message }], outcomeId(code, status)));
    socket.end(
      `HTTP/1.1 ${status} ${REASONS[status] ?? 'Bad Request'}\r\nContent-Type: application/fhir+json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n${body}`,
    );
  });
}
