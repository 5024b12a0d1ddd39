// Layers import only downward: engine < nn < models < preprocess < data < eval < train < api < serve < bundle < cli.
// Inference (api) never loads the trainer.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

const LAYERS = ['engine', 'nn', 'models', 'preprocess', 'data', 'eval', 'train', 'api', 'serve', 'bundle', 'cli'];
const SRC = path.resolve('src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : [],
  );
}

const layerOf = (file: string) => path.relative(SRC, file).split(path.sep)[0];

function imports(file: string, text = readFileSync(file, 'utf8')): { target: string; specifier: string }[] {
  return [...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|^import\s+)'(\.{1,2}\/[^']+)'/gm)].map((m) => ({
    specifier: m[1],
    target: path.resolve(path.dirname(file), m[1]),
  }));
}

test('no module imports from a layer above its own', () => {
  const upward: string[] = [];
  for (const file of sources(SRC)) {
    const layer = layerOf(file);
    if (!LAYERS.includes(layer)) continue;
    for (const { target, specifier } of imports(file)) {
      const to = layerOf(target);
      if (LAYERS.includes(to) && LAYERS.indexOf(to) > LAYERS.indexOf(layer)) upward.push(`${path.relative(SRC, file)} imports ${specifier} (${layer} → ${to})`);
    }
  }
  assert.deepEqual(upward, []);
});

test('the classifier does not load the trainer, directly or through what it imports', () => {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const { target } of imports(file)) visit(target.replace(/\.js$/, '.ts'));
  };
  visit(path.join(SRC, 'api/classifier.ts'));
  const training = [...seen].filter((f) => layerOf(f) === 'train').map((f) => path.relative(SRC, f));
  assert.deepEqual(training, []);
  assert.ok(seen.size > 10, `followed ${seen.size} modules`);
});

test('the check itself sees static, type-only and dynamic imports', () => {
  const file = path.join(SRC, 'engine/example.ts');
  const text =
    "import { a } from '../api/classifier.js';\nimport type { B } from '../train/trainer.js';\nconst c = await import('../cli/main.js');\nimport './tensor.js';\n";
  assert.deepEqual(
    imports(file, text).map((i) => layerOf(i.target)),
    ['api', 'train', 'cli', 'engine'],
  );
});
