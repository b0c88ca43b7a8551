// Registering users and clients (`vesta users add`, `vesta clients add`, and the tests).
import type { Queryable } from '../storage/db.js';
import { listClientRows, listUserRows, setUserDisabled, upsertClientRow, upsertUserRow } from '../storage/auth-store.js';
import { parseScope } from '../auth/scopes.js';
import { checkRegistration, type ClientRegistration } from './clients.js';
import { defaultUserScopes } from './smart-scopes.js';
import { hashPassword } from './users.js';

const USERNAME = /^[A-Za-z0-9._@-]{1,128}$/;
const FHIR_USER = /^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/;

export class AdminError extends Error {}

export interface NewUser {
  username: string;
  password: string;
  fhirUser?: string;
  /** Clinical scopes the user may grant to apps; default by kind of user (smart-scopes.ts). */
  scopes?: string;
}

export async function addUser(q: Queryable, u: NewUser): Promise<'created' | 'updated'> {
  if (!USERNAME.test(u.username)) throw new AdminError('the user name must be 1-128 characters of A-Z a-z 0-9 . _ @ -');
  if (u.fhirUser !== undefined && !FHIR_USER.test(u.fhirUser)) throw new AdminError('--fhir-user must be like Practitioner/123 or Patient/123');
  const scopes = (u.scopes ?? defaultUserScopes(u.fhirUser)).split(' ').filter(Boolean);
  for (const s of scopes) if (!parseScope(s) || s.startsWith('system/')) throw new AdminError(`user scope ${s} must be a patient/ or user/ clinical scope`);
  if (u.fhirUser?.startsWith('Patient/') && scopes.some((s) => s.startsWith('user/'))) throw new AdminError('a patient user may have patient/ scopes only (user/ scopes would reach other patients)');
  let passwordHash: string;
  try {
    passwordHash = await hashPassword(u.password);
  } catch (e) {
    throw new AdminError((e as Error).message);
  }
  return upsertUserRow(q, { username: u.username, passwordHash, fhirUser: u.fhirUser, scopes: scopes.join(' ') });
}

export async function addClient(q: Queryable, reg: ClientRegistration, opts: { allowLoopbackJwksUri: boolean }): Promise<'created' | 'updated'> {
  let checked: ClientRegistration;
  try {
    checked = checkRegistration(reg, opts);
  } catch (e) {
    throw new AdminError((e as Error).message);
  }
  return upsertClientRow(q, checked.client_id, checked as unknown as Record<string, unknown>);
}

export { listClientRows as listClients, listUserRows as listUsers, setUserDisabled };
