// The ordered list of migrations. A static list (not a directory scan) so the same code runs from
// TypeScript sources under Jest and from compiled output in production.
import type { Knex } from 'knex';
import * as m0001 from './0001_resources.js';
import * as m0002 from './0002_search_index.js';
import * as m0003 from './0003_sealed_kid.js';
import * as m0004 from './0004_blind_index.js';
import * as m0005 from './0005_position_index.js';
import * as m0006 from './0006_covering_indexes.js';
import * as m0007 from './0007_c_collation.js';
import * as m0008 from './0008_text_index.js';
import * as m0009 from './0009_revoked_tokens.js';
import * as m0010 from './0010_auth_server.js';
import * as m0011 from './0011_audit_ledger.js';
import * as m0012 from './0012_audit_search.js';
import * as m0013 from './0013_registry_sync.js';
import * as m0014 from './0014_registry_breaker.js';

export interface Migration {
  name: string;
  up(knex: Knex): Promise<void>;
  down(knex: Knex): Promise<void>;
}

export const MIGRATIONS: Migration[] = [
  { name: '0001_resources', ...m0001 },
  { name: '0002_search_index', ...m0002 },
  { name: '0003_sealed_kid', ...m0003 },
  { name: '0004_blind_index', ...m0004 },
  { name: '0005_position_index', ...m0005 },
  { name: '0006_covering_indexes', ...m0006 },
  { name: '0007_c_collation', ...m0007 },
  { name: '0008_text_index', ...m0008 },
  { name: '0009_revoked_tokens', ...m0009 },
  { name: '0010_auth_server', ...m0010 },
  { name: '0011_audit_ledger', ...m0011 },
  { name: '0012_audit_search', ...m0012 },
  { name: '0013_registry_sync', ...m0013 },
  { name: '0014_registry_breaker', ...m0014 },
];
