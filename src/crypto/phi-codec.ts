// The seam where PHI elements leave the JSONB before it reaches PostgreSQL (design.md "PHI at rest").
// Storage calls seal() on every write and open() on every read; the PHI issue supplies a JWE codec.
import type { Resource } from 'fhir/r4.js';
import type { BlindIndexer } from './blind-index.js';
import type { PhiPolicy } from './phi-policy.js';

export interface VersionRef {
  resourceType: string;
  id: string;
  versionId: number;
}

export interface Sealed {
  /** What goes into the JSONB column: the resource without its protected elements. */
  content: Resource;
  /** The protected elements as one compact JWE, or null when nothing is protected. */
  sealed: string | null;
  /**
   * Key id of the sealing that examined this version: the JWE's key, or the active key when the policy
   * found nothing to seal (null only when the codec does not seal). A re-seal visits every version whose
   * kid is not the active one, null included, so a changed policy reaches every stored version.
   */
  kid: string | null;
}

export interface PhiCodec {
  readonly name: string;
  /** Key id new seals use (null when the codec does not seal). */
  readonly activeKid: string | null;
  /** The policy of the elements sealed (null when the codec does not seal). */
  readonly policy: PhiPolicy | null;
  /** The blind-index HMAC key (separate from the encryption keys) and its kid; null without sealing. */
  readonly blind: { indexer: BlindIndexer; kid: string } | null;
  seal(resource: Resource, ref: VersionRef): Promise<Sealed>;
  /**
   * seal() of a resource the caller hands over: its protected elements may be removed in place (no
   * copy). For objects built for the purpose and used for nothing else (the audit path's records).
   */
  sealOwned(resource: Resource, ref: VersionRef): Promise<Sealed>;
  open(content: Resource, sealed: string | null, ref: VersionRef): Promise<Resource>;
  /** open() of content the caller hands over (a row just parsed): the elements are restored in place, no copy. */
  openOwned(content: Resource, sealed: string | null, ref: VersionRef): Promise<Resource>;
}

/** No protection: the resource is stored as written. The default until PHI sealing is configured. */
export class PlaintextCodec implements PhiCodec {
  readonly name = 'plaintext';
  readonly activeKid = null;
  readonly policy = null;
  readonly blind = null;

  async seal(resource: Resource): Promise<Sealed> {
    return { content: resource, sealed: null, kid: null };
  }

  async sealOwned(resource: Resource): Promise<Sealed> {
    return { content: resource, sealed: null, kid: null };
  }

  async open(content: Resource, sealed: string | null): Promise<Resource> {
    if (sealed !== null) throw new Error('row is sealed but no PHI key ring is configured');
    return content;
  }

  async openOwned(content: Resource, sealed: string | null): Promise<Resource> {
    return this.open(content, sealed);
  }
}
