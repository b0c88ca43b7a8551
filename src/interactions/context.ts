// What every interaction receives: services (long-lived) and the request context (per request).
import type { Resource } from 'fhir/r4.js';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { AuditSink } from '../audit/audit-sink.js';
import type { Database } from '../storage/db.js';
import type { ResourceStore } from '../storage/resource-store.js';
import type { PageTokens } from '../search/page-token.js';
import type { Issue } from '../fhir/errors.js';
import type { AuthService } from '../auth/authenticator.js';
import type { Principal } from '../auth/principal.js';

/** Checks a resource against the R4 definitions; returns every issue (errors reject a write). */
export interface ResourceValidator {
  validate(resource: unknown): Issue[];
}

export interface Services {
  config: Readonly<Config>;
  db: Database;
  store: ResourceStore;
  audit: AuditSink;
  pageTokens: PageTokens;
  validator: ResourceValidator;
  auth: AuthService;
  log: Logger;
}

export type PreferReturn = 'minimal' | 'representation' | 'OperationOutcome';

export interface RequestContext {
  requestId: string;
  /** Who is asking: the verified token's principal, a job's, or OPEN with AUTH=off (auth/principal.ts). */
  principal: Principal;
  clock: () => Date;
  baseUrl: string;
  preferReturn?: PreferReturn;
  preferHandling?: 'strict' | 'lenient';
}

/** What an interaction hands back; only http/respond.ts turns it into bytes. */
export interface InteractionResult {
  status: number;
  body?: Resource;
  headers?: Record<string, string>;
}
