// Full-text extraction for _text and _content (src/search/types/text.ts) and its PHI seam
// (src/search/phi-seam.ts protectTextRow): what becomes searchable text, what never does.
import { describe, expect, test } from '@jest/globals';
import { protectTextRow } from '../../src/search/phi-seam.js';
import { extractText, MAX_TEXT_CHARS, narrativeText, pathWithin, textDocument } from '../../src/search/types/text.js';
import type { BlindIndex } from '../../src/search/blind.js';

const ALL = { text: true, content: true };

describe('extraction', () => {
  test('the narrative loses its markup; entities are decoded', () => {
    expect(narrativeText('<div xmlns="http://www.w3.org/1999/xhtml"><p>a&amp;b</p><br/>c&#233;&#x41;&nbsp;d</div>').replace(/\s+/g, ' ').trim()).toBe('a&b c\u00e9A d');
  });

  test('_content holds the strings of the resource itself: not id, meta, contained, nested resources, base64 or addresses', () => {
    const rows = extractText(
      {
        resourceType: 'DocumentReference',
        id: 'idword',
        meta: { tag: [{ code: 'metaword' }] },
        contained: [{ resourceType: 'Patient', name: [{ family: 'containedword' }] }],
        status: 'current',
        description: 'Discharge summary',
        subject: { reference: 'Patient/refword', display: 'Displayword' },
        content: [{ attachment: { contentType: 'text/plain', data: 'YmFzZTY0d29yZA==', url: 'http://example.org/urlword', title: 'Titleword' } }],
        _status: { extension: [{ url: 'http://example.org/ext', valueString: 'extword' }] },
      },
      ALL,
    );
    expect(rows.map((r) => r.param)).toEqual(['_content']); // no narrative, no _text row
    const doc = textDocument(rows[0])!;
    for (const w of ['current', 'Discharge summary', 'Displayword', 'Titleword', 'text/plain', 'extword']) expect([w, doc.includes(w)]).toEqual([w, true]);
    for (const w of ['idword', 'metaword', 'containedword', 'refword', 'YmFzZTY0', 'urlword', 'DocumentReference']) expect([w, doc.includes(w)]).toEqual([w, false]);
    // a primitive's extension sibling counts as its element, for the PHI policy
    expect(rows[0].pieces.find(([, t]) => t === 'extword')?.[0]).toBe('status.extension.valueString');
  });

  test('a Bundle does not index its entries as its own content', () => {
    const rows = extractText({ resourceType: 'Bundle', type: 'collection', entry: [{ fullUrl: 'urn:x', resource: { resourceType: 'Patient', gender: 'entryword' } }] }, { text: false, content: true });
    expect(textDocument(rows[0])).not.toMatch(/entryword/);
  });

  test('accents are folded and the document is capped', () => {
    const rows = extractText({ resourceType: 'Basic', code: { text: 'Caf\u00e9 ' + 'x'.repeat(MAX_TEXT_CHARS * 2) } }, ALL);
    const doc = textDocument(rows[0])!;
    expect(doc.startsWith('Cafe')).toBe(true);
    expect(doc.length).toBe(MAX_TEXT_CHARS);
  });

  test('hostile markup is stripped in linear time', () => {
    const time = (n: number) => {
      const s = '<'.repeat(n) + 'a'.repeat(n) + '&#'.repeat(n);
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const t0 = process.hrtime.bigint();
        narrativeText(s);
        best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
      }
      return best;
    };
    const small = Math.max(time(10_000), 0.05);
    const large = time(100_000);
    expect(large < 5 || large / small < 30).toBe(true);
  });
});

describe('the PHI seam', () => {
  const row = { param: '_content', pieces: [['name.family', 'Sealedname'], ['gender', 'female'], ['deceasedDateTime', '2001'], ['text.div', 'story']] as [string, string][] };
  const blind = (paths: string[], narrative = false) => ({ sealedPaths: () => paths, sealsNarrative: () => narrative }) as unknown as BlindIndex;

  test('sealed element paths are left out before anything is indexed; [x] covers every variant', () => {
    expect(pathWithin('name.family', 'name')).toBe(true);
    expect(pathWithin('names', 'name')).toBe(false);
    expect(pathWithin('deceasedDateTime', 'deceased[x]')).toBe(true);
    expect(pathWithin('deceasedish', 'deceased[x]')).toBe(false);
    expect(protectTextRow('Patient', row, { sealed: true, blind: blind(['name', 'deceased[x]', 'text.div']) })?.doc).toBe('female');
    expect(protectTextRow('Patient', row, { sealed: false })?.doc).toMatch(/Sealedname.*female.*2001.*story/s);
  });

  test('fail closed: sealed without a policy indexes no text; _text goes when the narrative is sealed', () => {
    expect(protectTextRow('Patient', row, { sealed: true })).toBeUndefined();
    expect(protectTextRow('Patient', { param: '_text', pieces: [['text.div', 'story']] }, { sealed: true, blind: blind(['text.div'], true) })).toBeUndefined();
    expect(protectTextRow('Patient', { param: '_content', pieces: [['name', 'Sealedname']] }, { sealed: true, blind: blind(['name']) })).toBeUndefined();
  });
});
