// AuditEvents in the shape of IHE Basic Audit Log Patterns (BALP) for FHIR R4: one per interaction
// (and per entry of a transaction or batch), success or failure. Pure: the caller says what happened;
// this builds the resource. No token and no resource content: the token is recorded by its jti; the
// query by its parameter names in clear and in full in entity.query, which the PHI policy seals.
import { randomUUID } from 'node:crypto';
import type { LedgerEvent } from './ledger.js';

const EVENT_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
const RESTFUL = 'http://hl7.org/fhir/restful-interaction';
const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
const SOURCE_TYPE = 'http://terminology.hl7.org/CodeSystem/security-source-type';
const PARTICIPATION = 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType';
export const VESTA_AUDIT = 'https://vesta.dev/fhir/CodeSystem/audit';

export type AuditAction = 'C' | 'R' | 'U' | 'D' | 'E';

/** R4 AuditEvent.action of a restful interaction. */
export function actionOf(interaction: string): AuditAction {
  switch (interaction) {
    case 'create':
      return 'C';
    case 'update':
    case 'patch':
      return 'U';
    case 'delete':
      return 'D';
    case 'read':
    case 'vread':
    case 'history-instance':
    case 'history-type':
    case 'history-system':
    case 'search-type':
    case 'search-system':
    case 'search-compartment':
    case 'capabilities':
      return 'R';
    default:
      return 'E'; // transaction, batch, operations, sign-in events
  }
}

/** R4 outcome codes: 0 success, 4 minor failure (client error), 8 serious failure (server error). */
export function outcomeOf(status: number): '0' | '4' | '8' {
  if (status < 400) return '0';
  if (status < 500) return '4';
  return '8';
}

export interface AuditFacts {
  /** restful-interaction code, `operation:<name>`, or an authorization-server event (`login`, `token`, ...). */
  interaction: string;
  status: number;
  /** What went wrong or right, without PHI (an error code, a status line). */
  description?: string;
  recorded: Date;
  requestId: string;
  /** The client application (token client_id), the user (sub, fhirUser), the token's jti. */
  client: string;
  user?: string;
  fhirUser?: string;
  tokenId?: string;
  /** Network address of the client. */
  address?: string;
  /** This server (base URL). */
  server: string;
  /** Resources touched: `Type/id` with their version when known. */
  resources?: { type: string; id: string; version?: string }[];
  /** Patients whose compartment the resources are in. */
  patients?: string[];
  /**
   * Searches: the resource type, the parameter names, and the query string itself (`text`), which
   * goes into entity.query: a PHI-bearing element the PHI policy seals before the record is stored.
   */
  query?: { type?: string; parameters: string[]; text?: string };
  /** Set for a background job instead of a token's client. */
  job?: string;
}

export function buildAuditEvent(f: AuditFacts): LedgerEvent {
  const restful = !/^(auth|job|request):/.test(f.interaction);
  const subtypeCode = f.interaction.startsWith('operation:') ? 'operation' : f.interaction.replace(/^search-compartment$/, 'search-type');
  const agents: Record<string, unknown>[] = [];
  agents.push({
    type: { coding: [{ system: DCM, code: '110153', display: 'Source Role ID' }] },
    who: f.job ? { display: f.job } : { identifier: { system: `${f.server}/auth/clients`, value: f.client } },
    requestor: !f.user,
    ...(f.address ? { network: { address: f.address, type: '2' } } : {}),
    ...(f.tokenId ? { policy: [f.tokenId] } : {}),
  });
  if (f.user) {
    agents.push({
      type: { coding: [{ system: PARTICIPATION, code: 'IRCP', display: 'information recipient' }] },
      who: f.fhirUser ? { reference: f.fhirUser } : { identifier: { value: f.user } },
      altId: f.user,
      requestor: true,
      ...(f.tokenId ? { policy: [f.tokenId] } : {}),
    });
  }
  agents.push({
    type: { coding: [{ system: DCM, code: '110152', display: 'Destination Role ID' }] },
    who: { identifier: { value: f.server } },
    requestor: false,
    network: { address: f.server, type: '5' },
  });
  const entities: Record<string, unknown>[] = [];
  for (const r of f.resources ?? []) {
    entities.push({
      what: { reference: `${r.type}/${r.id}${r.version ? `/_history/${r.version}` : ''}` },
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '4', display: 'Domain Resource' },
    });
  }
  for (const p of new Set(f.patients ?? [])) {
    entities.push({ what: { reference: `Patient/${p}` }, type: { system: ENTITY_TYPE, code: '1', display: 'Person' }, role: { system: OBJECT_ROLE, code: '1', display: 'Patient' } });
  }
  if (f.query) {
    entities.push({
      type: { system: ENTITY_TYPE, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE, code: '24', display: 'Query' },
      // Parameter names only: values can be PHI (a name, an identifier).
      description: `${f.query.type ?? '*'}?${[...new Set(f.query.parameters)].sort().join('&')}`,
      ...(f.query.text ? { query: Buffer.from(f.query.text, 'utf8').toString('base64') } : {}),
    });
  }
  entities.push({
    what: { identifier: { type: { coding: [{ system: VESTA_AUDIT, code: 'request-id' }] }, value: f.requestId } },
    type: { system: ENTITY_TYPE, code: '4', display: 'Other' },
    role: { system: OBJECT_ROLE, code: '26', display: 'Transaction' },
  });
  return {
    resourceType: 'AuditEvent',
    id: randomUUID(),
    type: restful ? { system: EVENT_TYPE, code: 'rest', display: 'Restful Operation' } : { system: VESTA_AUDIT, code: f.interaction.split(':')[0], display: f.interaction },
    subtype: [restful ? { system: RESTFUL, code: subtypeCode } : { system: VESTA_AUDIT, code: f.interaction }],
    action: actionOf(f.interaction),
    recorded: f.recorded.toISOString(),
    outcome: outcomeOf(f.status),
    outcomeDesc: f.description ? `${f.status} ${f.description}` : String(f.status),
    agent: agents,
    // The observer by identifier (its base URL): `source:identifier=urn:ietf:rfc:3986|<base>` finds this server's records.
    source: { site: f.server, observer: { identifier: { system: 'urn:ietf:rfc:3986', value: f.server }, display: 'Vesta FHIR server' }, type: [{ system: SOURCE_TYPE, code: '4', display: 'Application Server' }] },
    entity: entities,
  };
}
