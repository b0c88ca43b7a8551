// capabilities: GET [base]/metadata (https://hl7.org/fhir/R4/http.html#capabilities). Built from
// the same tables the server runs on: the generated resource types, the interactions the router
// serves, and the search parameters the search registry actually serves.
import { smartEndpoints } from '../auth/smart-configuration.js';
import type { CapabilityStatement, CapabilityStatementRestResource, CapabilityStatementRestSecurity } from 'fhir/r4.js';
import { compartmentDefinitions, resourceTypeInfo } from '../fhir/definitions.js';
import { paramsOf, supportedSearchParams } from '../search/registry.js';
import { AUDIT_SEARCH_PARAMS } from './audit-events.js';
import type { InteractionResult, RequestContext, Services } from './context.js';

/** Type-level interactions the router serves for every resource type. */
export const TYPE_INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'history-type', 'create', 'search-type'] as const;
/** System-level interactions the router serves. */
export const SYSTEM_INTERACTIONS = ['transaction', 'batch', 'history-system', 'search-system'] as const;

/** Parameters every resource type has (search.html#all), served on system search. */
const COMMON = ['_id', '_lastUpdated', '_tag', '_profile', '_security', '_source', '_content'];

export const SOFTWARE = { name: 'Vesta', version: '0.1.0' };

const STARTED = new Date().toISOString();

let cached: { key: string; statement: CapabilityStatement } | undefined;

function build(svc: Services, ctx: RequestContext): CapabilityStatement {
  const phi = svc.store.phiIndexMode;
  const resources: CapabilityStatementRestResource[] = resourceTypeInfo().map(({ type }) => {
    if (type === 'AuditEvent') return auditEventResource();
    const params = supportedSearchParams(type, phi);
    const refs = [...paramsOf(type).supported.values()].filter((p) => p.kind === 'reference').map((p) => `${type}:${p.code}`);
    return {
      type: type as CapabilityStatementRestResource['type'],
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      interaction: TYPE_INTERACTIONS.map((code) => ({ code })),
      versioning: 'versioned-update',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalRead: 'not-supported',
      conditionalUpdate: true,
      conditionalDelete: 'single',
      searchInclude: ['*', ...refs],
      operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
      searchParam: params.map((p) => ({ name: p.name, type: p.type as 'token', definition: p.definition, documentation: p.documentation })),
    };
  });
  // _revinclude names the referring type's parameters: list each type's incoming reference parameters.
  const incoming = new Map<string, string[]>();
  for (const { type } of resourceTypeInfo()) {
    // AuditEvents live in the ledger, outside the index that _include and _revinclude walk.
    if (type === 'AuditEvent') continue;
    for (const p of paramsOf(type).supported.values()) {
      if (p.kind !== 'reference') continue;
      for (const target of p.def.target.length ? p.def.target : resourceTypeInfo().map((t) => t.type)) incoming.set(target, [...(incoming.get(target) ?? []), `${type}:${p.code}`]);
    }
  }
  for (const r of resources) {
    const rev = r.type === 'AuditEvent' ? [] : (incoming.get(r.type) ?? []);
    if (rev.length) r.searchRevInclude = rev;
    else delete r.searchRevInclude;
  }
  const systemParams = supportedSearchParams('Patient', phi).filter((p) => COMMON.includes(p.name));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: STARTED,
    publisher: 'Vesta',
    kind: 'instance',
    software: SOFTWARE,
    implementation: { description: 'Vesta FHIR R4 server', url: ctx.baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    patchFormat: ['application/json-patch+json'],
    rest: [
      {
        mode: 'server',
        documentation:
          'JSON only: XML request bodies are refused with 415 and XML responses with 406. Search serves the parameters listed per type ' +
          '(string, token, reference, date, number, quantity, uri, composite, and the special parameter Location near: great-circle ' +
          'distance, km by default, 5 km without a distance) with their modifiers, token :in/:not-in against the value ' +
          'sets of the R4 package that can be expanded from it (any other value set is refused with 400), chaining and _has, _sort, _total, ' +
          '_count, _summary (true, text, data, count, false; true, text and data also on read, vread and history; count also on instance history), _elements (also on read, vread and history), ' +
          '_include/_revinclude (with :iterate, capped, marked incomplete when cut), ' +
          'paging with self/next/previous links, system search (_type) and compartment search, and full text with _text (narrative) and _content ' +
          '(PostgreSQL full text; with PHI sealed, sealed elements are not indexed and _text is withheld where the narrative is sealed). ' +
          'Not served: _filter, _query, token :above/:below. Unknown or unsupported parameters are ignored and reported in ' +
          'an OperationOutcome entry (400 with Prefer: handling=strict). Transaction and batch Bundles are supported (PATCH entries as a JSON Patch Binary; no $operations inside Bundles). $validate checks against the base R4 definitions only (no named profiles). ' +
          'Conditional create/update/delete/patch criteria are serialized per criteria by a database lock.',
        security: security(svc, ctx),
        resource: resources,
        interaction: SYSTEM_INTERACTIONS.map((code) => ({ code })),
        searchParam: systemParams.map((p) => ({ name: p.name, type: p.type as 'token', definition: p.definition, documentation: p.documentation })),
        compartment: compartmentDefinitions().map((c) => c.url),
      },
    ],
  };
}

/**
 * AuditEvent (issue 16 item 7): the ledger's entries, read and searched by audit-events.ts, created by
 * clients (appended like any other record); never updated, patched or deleted, one version each.
 */
function auditEventResource(): CapabilityStatementRestResource {
  return {
    type: 'AuditEvent',
    profile: 'http://hl7.org/fhir/StructureDefinition/AuditEvent',
    documentation:
      'AuditEvents are entries of the tamper-evident audit ledger: one per interaction, appended by the server (IHE BALP shape), and those clients create. ' +
      'They are never updated, patched or deleted (405) and have one version. Search is over the ledger: no _include, _revinclude, chains or _has.',
    interaction: (['read', 'vread', 'search-type', 'create'] as const).map((code) => ({ code })),
    versioning: 'versioned',
    readHistory: false,
    updateCreate: false,
    conditionalCreate: false,
    conditionalRead: 'not-supported',
    conditionalUpdate: false,
    conditionalDelete: 'not-supported',
    operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
    searchParam: AUDIT_SEARCH_PARAMS.map((p) => ({ name: p.name, type: p.type, definition: p.definition, documentation: p.documentation })),
  };
}

/** rest.security (https://hl7.org/fhir/R4/capabilitystatement-definitions.html#CapabilityStatement.rest.security). */
function security(svc: Services, ctx: RequestContext): CapabilityStatementRestSecurity {
  if (!svc.auth.enabled) {
    return { cors: true, description: 'AUTH=off: NO SECURITY APPLIES. This server accepts every request without a token; it is running in a local development mode and must not hold real data.' };
  }
  const e = smartEndpoints(ctx.baseUrl);
  const server = svc.config.authServer;
  return {
    cors: true,
    // SMART App Launch "Conformance": the OAuth endpoints also appear here (oauth-uris extension).
    ...(server
      ? {
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [
                { url: 'authorize', valueUri: e.authorize },
                { url: 'token', valueUri: e.token },
                { url: 'introspect', valueUri: e.introspect },
                { url: 'revoke', valueUri: e.revoke },
              ],
            },
          ],
        }
      : {}),
    service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }], text: 'SMART on FHIR bearer tokens' }],
    description:
      'Every interaction except this CapabilityStatement needs Authorization: Bearer <JWT> (RFC 6750), signed by this server ' +
      `(keys at ${e.jwks}; issuer and audience ${ctx.baseUrl}) or by an issuer the operator trusts; RS256, RS384, ES256 or ES384. ` +
      'SMART App Launch 2.x scopes are enforced on every interaction and on every entry of a transaction or batch: v2 patient|user|system/[type|*].[cruds] ' +
      'with ?param=value constraints (search parameters of the type itself; no chains) and v1 .read/.write/.*. patient/ scopes confine the token to the Patient ' +
      "compartment of its patient claim. A missing scope is a 403 naming it; a resource outside the token's reach answers as one that does not exist (404). " +
      `Discovery: ${ctx.baseUrl}/.well-known/smart-configuration. ` +
      (server
        ? `Vesta's own SMART authorization server: authorize ${e.authorize}, token ${e.token} (App Launch with PKCE S256, Backend Services with private_key_jwt), ` +
          `introspection ${e.introspect}, revocation ${e.revoke}, EHR launch contexts ${e.launch}.`
        : 'The built-in authorization server is off (AUTH_SERVER=off): tokens come from `vesta token` or from a trusted external issuer.'),
  };
}

export async function capabilities(svc: Services, ctx: RequestContext): Promise<InteractionResult> {
  if (!cached || cached.key !== ctx.baseUrl) cached = { key: ctx.baseUrl, statement: build(svc, ctx) };
  return { status: 200, body: cached.statement };
}
