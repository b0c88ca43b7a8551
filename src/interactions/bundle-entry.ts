// Parsing of Bundle.entry.request for transaction and batch (https://hl7.org/fhir/R4/bundle.html,
// https://hl7.org/fhir/R4/http.html#transaction).
import { FhirError } from '../fhir/errors.js';

export type EntryMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface ParsedEntry {
  index: number;
  fullUrl?: string;
  method: EntryMethod;
  type: string;
  id?: string;
  vid?: string;
  /** '_history' or '$operation' after the id/type, when present. */
  tail?: string;
  query?: string;
  resource?: Record<string, unknown>;
  ifNoneExist?: string;
  ifMatch?: string;
  ifNoneMatch?: string;
  ifModifiedSince?: string;
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']);

/** Strips our own base URL so absolute URLs on this server read as relative ones. */
function relative(url: string, baseUrl: string): string {
  if (url.startsWith(baseUrl + '/')) return url.slice(baseUrl.length + 1);
  if (/^[a-z]+:/i.test(url)) throw new FhirError('invalid-request', 'entry request.url must be relative to this server');
  return url.replace(/^\/+/, '');
}

export function parseEntry(raw: unknown, index: number, baseUrl: string): ParsedEntry {
  const bad = (why: string) => new FhirError('invalid-request', `entry ${index}: ${why}`);
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw bad('is not an object');
  const e = raw as Record<string, unknown>;
  const req = e.request as Record<string, unknown> | undefined;
  if (!req || typeof req !== 'object') throw bad('has no request');
  if (typeof req.method !== 'string' || !METHODS.has(req.method)) throw bad('request.method must be GET, HEAD, POST, PUT, PATCH or DELETE');
  if (typeof req.url !== 'string' || !req.url) throw bad('has no request.url');
  const method = req.method as EntryMethod;
  const url = relative(req.url, baseUrl);
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = q < 0 ? undefined : url.slice(q + 1);
  const segs = path.split('/').filter(Boolean);
  if (!segs.length) throw bad('request.url names no resource type');
  const [type, id, third, vid] = segs;
  if (segs.length > 4) throw bad('request.url has too many segments');
  const parsed: ParsedEntry = { index, method, type };
  if (id !== undefined) parsed.id = id;
  if (third !== undefined) parsed.tail = third;
  if (vid !== undefined) parsed.vid = vid;
  if (query !== undefined) parsed.query = query;
  if (typeof e.fullUrl === 'string' && e.fullUrl) parsed.fullUrl = e.fullUrl;
  else if (e.fullUrl !== undefined) throw bad('fullUrl must be a string');
  if (e.resource !== undefined) {
    if (!e.resource || typeof e.resource !== 'object' || Array.isArray(e.resource)) throw bad('resource must be an object');
    parsed.resource = e.resource as Record<string, unknown>;
  }
  for (const k of ['ifNoneExist', 'ifMatch', 'ifNoneMatch', 'ifModifiedSince'] as const) {
    const v = req[k];
    if (v === undefined) continue;
    if (typeof v !== 'string') throw bad(`request.${k} must be a string`);
    parsed[k] = v;
  }
  if ((method === 'POST' || method === 'PUT') && !parsed.resource) throw bad(`${method} needs a resource`);
  if (method === 'PATCH' && !parsed.resource) throw bad('PATCH needs a Binary or Parameters resource');
  if ((method === 'PUT' || method === 'PATCH' || method === 'DELETE') && parsed.id === undefined && parsed.query === undefined) {
    throw bad(`${method} needs [type]/[id] or [type]?criteria`);
  }
  if (method === 'POST' && (parsed.id !== undefined || parsed.query !== undefined)) {
    if (!(parsed.id?.startsWith('$') || parsed.id === '_search')) throw bad('POST goes to [type]');
  }
  return parsed;
}

const REASON: Record<number, string> = {
  200: 'OK', 201: 'Created', 204: 'No Content', 304: 'Not Modified', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  409: 'Conflict', 410: 'Gone', 412: 'Precondition Failed', 413: 'Payload Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable Entity', 500: 'Internal Server Error', 501: 'Not Implemented',
};

export function statusText(status: number): string {
  return `${status} ${REASON[status] ?? ''}`.trim();
}
