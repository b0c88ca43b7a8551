// The PHI policy (design.md "PHI at rest"): which elements of which resource types are sealed.
// Data, not code: a JSON file, checked at start against the R4 element index.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPackageRoot } from '../fhir/package-root.js';
import { elementIndex } from '../fhir/definitions.js';

export interface PhiPolicyFile {
  description?: string;
  resources: Record<string, string[]>;
}

export class PhiPolicyError extends Error {}

/** Whether `path` (e.g. "note.text") names an element of `type`, walking into datatypes. */
export function isElementPath(type: string, path: string): boolean {
  const idx = elementIndex();
  let structure = type;
  let prefix = '';
  for (const seg of path.split('.')) {
    const elems = idx[structure];
    if (!elems) return false;
    const key = prefix ? `${prefix}.${seg}` : seg;
    const types = elems[key];
    if (!types) return false;
    const complex = types.filter((t) => /^[A-Z]/.test(t) && t !== 'BackboneElement' && t !== 'Element');
    if (types.length === 1 && types[0].startsWith('#')) {
      prefix = types[0].slice(1);
    } else if (complex.length === 1 && types.length === 1 && idx[complex[0]]) {
      structure = complex[0];
      prefix = '';
    } else prefix = key;
  }
  return true;
}

export class PhiPolicy {
  private readonly byType = new Map<string, string[]>();

  constructor(private readonly file: PhiPolicyFile, resourceTypes: readonly string[]) {
    if (!file || typeof file !== 'object' || !file.resources || typeof file.resources !== 'object') {
      throw new PhiPolicyError('PHI policy: "resources" must map resource types to element paths');
    }
    const wildcard = file.resources['*'] ?? [];
    for (const [type, paths] of Object.entries(file.resources)) {
      if (!Array.isArray(paths) || paths.some((p) => typeof p !== 'string' || !p)) throw new PhiPolicyError(`PHI policy: ${type} must list element paths`);
      if (type === '*') {
        for (const p of paths) if (!resourceTypes.some((t) => isElementPath(t, p))) throw new PhiPolicyError(`PHI policy: "*": no resource type has the element ${p}`);
        continue;
      }
      if (!resourceTypes.includes(type)) throw new PhiPolicyError(`PHI policy: unknown resource type ${type}`);
      for (const p of paths) if (!isElementPath(type, p)) throw new PhiPolicyError(`PHI policy: ${type} has no element ${p}`);
    }
    for (const t of resourceTypes) {
      const own = file.resources[t] ?? [];
      const all = [...new Set([...own, ...wildcard.filter((p) => isElementPath(t, p))])].sort();
      if (all.length) this.byType.set(t, all);
    }
  }

  /** Element paths protected for a resource type (empty when none). */
  pathsFor(type: string): readonly string[] {
    return this.byType.get(type) ?? [];
  }

  get description(): string {
    return this.file.description ?? '';
  }
}

/** Loads the policy from a file, or the documented default shipped with Vesta. */
export function loadPhiPolicy(path: string | undefined, resourceTypes: readonly string[]): PhiPolicy {
  const file = path ?? join(findPackageRoot(), 'src', 'crypto', 'phi-policy.default.json');
  let parsed: PhiPolicyFile;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8')) as PhiPolicyFile;
  } catch (e) {
    throw new PhiPolicyError(`PHI policy: cannot read ${path ? 'PHI_POLICY_FILE' : 'the default policy'}: ${(e as Error).message}`);
  }
  return new PhiPolicy(parsed, resourceTypes);
}
