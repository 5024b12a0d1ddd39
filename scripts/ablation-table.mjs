// Summarises scripts/ablations.sh: per model and MPM setting, the best validation accuracy and macro-F1 of each
// seed, as mean ± half the range, in a Markdown table. Usage: node scripts/ablation-table.mjs runs/ablations
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const root = process.argv[2] ?? 'runs/ablations';
const groups = new Map();
for (const name of readdirSync(root)) {
  const log = path.join(root, name, 'log.jsonl');
  const match = /^(.*)-mpm-(on|off)-seed(\d+)$/.exec(name);
  if (!match || !existsSync(log)) continue;
  const epochs = readFileSync(log, 'utf8').trim().split('\n').map((line) => JSON.parse(line));
  const best = epochs.reduce((a, b) => (b.val_macro_f1 > a.val_macro_f1 ? b : a));
  const key = `${match[1]} | MPM ${match[2]}`;
  groups.set(key, [...(groups.get(key) ?? []), { accuracy: best.val_accuracy, f1: best.val_macro_f1, epochs: epochs.length }]);
}
const stat = (values) => {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const half = (Math.max(...values) - Math.min(...values)) / 2;
  return `${(100 * mean).toFixed(2)} ± ${(100 * half).toFixed(2)}`;
};
console.log('| model | MPM | seeds | validation accuracy (%) | validation macro-F1 (%) |');
console.log('|---|---|---|---|---|');
for (const [key, runs] of [...groups].sort()) {
  const [model, mpm] = key.split(' | ');
  console.log(`| ${model} | ${mpm.replace('MPM ', '')} | ${runs.length} | ${stat(runs.map((r) => r.accuracy))} | ${stat(runs.map((r) => r.f1))} |`);
}
