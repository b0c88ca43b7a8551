// The closed catalogue of errors Vesta raises (https://hl7.org/fhir/R4/operationoutcome.html#issue-codes).
// http/errors.ts is the only place that turns them into responses.

export type IssueSeverity = 'fatal' | 'error' | 'warning' | 'information';

export interface Issue {
  severity: IssueSeverity;
  code: string;
  diagnostics: string;
  expression?: string[];
}

/** Each code maps to one HTTP status and one OperationOutcome issue.code. */
export const ERROR_CATALOGUE = {
  'invalid-json': { status: 400, issue: 'structure' },
  'invalid-resource': { status: 400, issue: 'structure' },
  'invalid-request': { status: 400, issue: 'invalid' },
  'invalid-search': { status: 400, issue: 'invalid' },
  'unsupported-search': { status: 400, issue: 'not-supported' },
  /** A search or history request over one of its budgets (search/budget.ts). */
  'too-costly': { status: 400, issue: 'too-costly' },
  unauthorized: { status: 401, issue: 'login' },
  forbidden: { status: 403, issue: 'forbidden' },
  'unknown-type': { status: 404, issue: 'not-supported' },
  'not-found': { status: 404, issue: 'not-found' },
  'unknown-route': { status: 404, issue: 'not-found' },
  'method-not-allowed': { status: 405, issue: 'not-supported' },
  'not-acceptable': { status: 406, issue: 'not-supported' },
  conflict: { status: 409, issue: 'conflict' },
  'retry-exhausted': { status: 409, issue: 'transient' },
  /** Stored PHI failed its integrity check (moved or altered ciphertext): refused, never guessed. */
  integrity: { status: 409, issue: 'conflict' },
  gone: { status: 410, issue: 'deleted' },
  'version-mismatch': { status: 412, issue: 'conflict' },
  'multiple-matches': { status: 412, issue: 'multiple-matches' },
  'too-large': { status: 413, issue: 'too-costly' },
  /** Refused by the HTTP parser before routing (http/client-error.ts). */
  'uri-too-long': { status: 414, issue: 'too-long' },
  'headers-too-large': { status: 431, issue: 'too-long' },
  'request-timeout': { status: 408, issue: 'timeout' },
  'unsupported-media-type': { status: 415, issue: 'not-supported' },
  unprocessable: { status: 422, issue: 'processing' },
  'validation-failed': { status: 422, issue: 'invalid' },
  'not-implemented': { status: 501, issue: 'not-supported' },
  unavailable: { status: 503, issue: 'transient' },
  internal: { status: 500, issue: 'exception' },
} as const satisfies Record<string, { status: number; issue: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** The one error type of Vesta. Messages must never carry PHI or resource content. */
export class FhirError extends Error {
  readonly code: ErrorCode;
  readonly issues: Issue[];
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, opts: { issues?: Issue[]; headers?: Record<string, string>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'FhirError';
    this.code = code;
    this.issues = opts.issues ?? [];
    this.headers = opts.headers ?? {};
  }

  get status(): number {
    return ERROR_CATALOGUE[this.code].status;
  }
}

export function isFhirError(e: unknown): e is FhirError {
  return e instanceof FhirError;
}
