/**
 * Every export carries a TSDoc comment (the project's `deny(missing_docs)`): walks every source
 * file with the TypeScript compiler API and lists exported declarations without a `/** ... *\/`.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = join(import.meta.dirname, '..', 'src');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith('.ts') && !name.endsWith('.test.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function hasDoc(node: ts.Node, text: string): boolean {
  const ranges = ts.getLeadingCommentRanges(text, node.getFullStart()) ?? [];
  return ranges.some((r) => text.slice(r.pos, r.pos + 3) === '/**');
}

function isExported(node: ts.Node): boolean {
  return (
    ts.canHaveModifiers(node) &&
    (ts.getModifiers(node) ?? []).some((m) => m.kind === ts.SyntaxKind.ExportKeyword)
  );
}

/** Exported declarations of a file that have no doc comment, as `file:line name`. */
function undocumented(path: string): string[] {
  const text = readFileSync(path, 'utf8');
  const sf = ts.createSourceFile(path, text, ts.ScriptTarget.ES2022, true);
  const missing: string[] = [];
  for (const stmt of sf.statements) {
    if (!isExported(stmt)) continue;
    if (!hasDoc(stmt, text)) {
      const name = ts.isVariableStatement(stmt)
        ? stmt.declarationList.declarations.map((d) => d.name.getText(sf)).join(', ')
        : ((stmt as ts.DeclarationStatement).name?.getText(sf) ?? '?');
      const line = sf.getLineAndCharacterOfPosition(stmt.getStart(sf)).line + 1;
      missing.push(`${relative(SRC, path)}:${line} ${name}`);
    }
  }
  return missing;
}

describe('documentation', () => {
  it('every exported declaration in src has a TSDoc comment', () => {
    const missing = sourceFiles(SRC).flatMap(undocumented);
    expect(missing).toEqual([]);
  });

  it('every module starts with a file comment', () => {
    const bare = sourceFiles(SRC).filter(
      (p) =>
        !readFileSync(p, 'utf8')
          .trimStart()
          .replace(/^#!.*\n/, '')
          .startsWith('/**'),
    );
    expect(bare.map((p) => relative(SRC, p))).toEqual([]);
  });
});
