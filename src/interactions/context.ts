// What every interaction receives: services (long-lived) and the request context (per request).
import type { Resource } from 'fhir/r4.js';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { Auditor } from '../audit/auditor.js';
import type { AuditTrail } from '../audit/trail.js';
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
  /** The audit path: builds, seals and appends AuditEvents (audit/auditor.ts). */
  audit: Auditor;
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
  /** What this interaction touches, for its AuditEvent (interactions/audit.ts records it). */
  audit: AuditTrail;
  /** Network address of the client, for the AuditEvent. */
  address?: string;
  preferReturn?: PreferReturn;
  preferHandling?: 'strict' | 'lenient';
}

/** What an interaction hands back; only http/respond.ts turns it into bytes. */
export interface InteractionResult {
  status: number;
  body?: Resource;
  headers?: Record<string, string>;
}
