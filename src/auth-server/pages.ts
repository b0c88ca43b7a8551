// Server-rendered pages of the sign-in flow: login, patient picker, consent. Plain HTML forms, no
// scripts; every value is escaped; every form carries the interaction's CSRF token.

export function esc(s: unknown): string {
  return String(s ?? '').replace(/[&<>"'`]/g, (c) => `&#${c.charCodeAt(0)};`);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:38rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.4rem}form{margin:1rem 0}label{display:block;margin:.5rem 0}input[type=text],input[type=password],input[type=search]{width:100%;padding:.4rem;font-size:1rem}
button{padding:.45rem 1rem;font-size:1rem;margin-top:.5rem}.error{color:#a00000}.muted{color:#555;font-size:.9rem}li{margin:.3rem 0}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem;border-bottom:1px solid #ddd}`;

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${STYLE}</style></head><body>${body}</body></html>`;
}

export function loginPage(o: { action: string; csrf: string; clientName: string; error?: string; username?: string }): string {
  return page(
    'Sign in - Vesta',
    `<h1>Sign in</h1><p><strong>${esc(o.clientName)}</strong> asks to use your Vesta account.</p>
${o.error ? `<p class="error" role="alert">${esc(o.error)}</p>` : ''}
<form method="post" action="${esc(o.action)}" autocomplete="off">
<input type="hidden" name="csrf" value="${esc(o.csrf)}">
<label>User name <input type="text" name="username" required maxlength="128" value="${esc(o.username ?? '')}" autofocus></label>
<label>Password <input type="password" name="password" required maxlength="1024"></label>
<button type="submit">Sign in</button>
</form>
<form method="post" action="${esc(o.action.replace(/\/login$/, '/abort'))}"><input type="hidden" name="csrf" value="${esc(o.csrf)}"><button type="submit">Cancel</button></form>`,
  );
}

export interface PatientRow {
  id: string;
  name: string;
  birthDate?: string;
  gender?: string;
}

export function pickerPage(o: { searchAction: string; pickAction: string; csrf: string; clientName: string; query: string; patients: PatientRow[]; searched: boolean; error?: string }): string {
  const rows = o.patients
    .map(
      (p) => `<tr><td>${esc(p.name)}</td><td>${esc(p.birthDate ?? '')}</td><td>${esc(p.gender ?? '')}</td><td>
<form method="post" action="${esc(o.pickAction)}"><input type="hidden" name="csrf" value="${esc(o.csrf)}"><input type="hidden" name="patient" value="${esc(p.id)}"><button type="submit" aria-label="Select ${esc(p.name)}">Select</button></form></td></tr>`,
    )
    .join('');
  return page(
    'Choose a patient - Vesta',
    `<h1>Choose a patient</h1><p><strong>${esc(o.clientName)}</strong> will see the record of the patient you choose.</p>
${o.error ? `<p class="error" role="alert">${esc(o.error)}</p>` : ''}
<form method="get" action="${esc(o.searchAction)}"><label>Name <input type="search" name="name" value="${esc(o.query)}" maxlength="100" autofocus></label><button type="submit">Search</button></form>
${o.searched ? (o.patients.length ? `<table><thead><tr><th>Name</th><th>Born</th><th>Gender</th><th></th></tr></thead><tbody>${rows}</tbody></table>` : '<p>No patient matches.</p>') : '<p class="muted">Search by family or given name.</p>'}`,
  );
}

export interface ConsentItem {
  scope: string;
  description: string;
}

export function consentPage(o: {
  action: string;
  abortAction: string;
  csrf: string;
  clientName: string;
  items: ConsentItem[];
  refused: { scope: string; by: string }[];
  patientLabel?: string;
}): string {
  const items = o.items
    .map((i) => `<li><label><input type="checkbox" name="scope" value="${esc(i.scope)}" checked> <code>${esc(i.scope)}</code> <span class="muted">${esc(i.description)}</span></label></li>`)
    .join('');
  const refused = o.refused.length
    ? `<p class="muted">Asked for but not available: ${o.refused.map((r) => `<code>${esc(r.scope)}</code> (${esc(r.by)})`).join(', ')}</p>`
    : '';
  return page(
    'Allow access - Vesta',
    `<h1>Allow access</h1><p><strong>${esc(o.clientName)}</strong> asks for the access below${o.patientLabel ? ` to the record of <strong>${esc(o.patientLabel)}</strong>` : ''}. Clear any you do not want to grant.</p>
<form method="post" action="${esc(o.action)}"><input type="hidden" name="csrf" value="${esc(o.csrf)}"><ul>${items}</ul>${refused}<button type="submit">Allow</button></form>
<form method="post" action="${esc(o.abortAction)}"><input type="hidden" name="csrf" value="${esc(o.csrf)}"><button type="submit">Deny</button></form>`,
  );
}

export function messagePage(title: string, message: string): string {
  return page(`${title} - Vesta`, `<h1>${esc(title)}</h1><p>${esc(message)}</p>`);
}

/** A human description of a scope for the consent page. */
export function describeScope(scope: string): string {
  switch (scope) {
    case 'openid':
      return 'confirm who you are';
    case 'fhirUser':
      return 'know your FHIR user record';
    case 'profile':
      return 'see your user name';
    case 'launch':
      return 'receive the context the EHR launched it with';
    case 'launch/patient':
      return 'receive the chosen patient';
    case 'launch/encounter':
      return 'receive the current encounter';
    case 'offline_access':
      return 'keep access after you sign out (refresh token)';
    case 'online_access':
      return 'keep access while you are signed in (refresh token)';
  }
  const m = /^(patient|user|system)\/([^.]+)\.([^?]+)(\?.*)?$/.exec(scope);
  if (!m) return '';
  const [, ctx, type, perm, q] = m;
  const verbs: Record<string, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };
  const perms = perm === 'read' ? 'read and search' : perm === 'write' ? 'create, update and delete' : perm === '*' ? 'read, search, create, update and delete' : [...perm].map((l) => verbs[l] ?? l).join(', ');
  const what = type === '*' ? 'all resource types' : type;
  const whose = ctx === 'patient' ? "in the patient's record" : ctx === 'user' ? 'that you can see' : 'on the whole server';
  return `${perms} ${what} ${whose}${q ? ` where ${q.slice(1)}` : ''}`;
}
