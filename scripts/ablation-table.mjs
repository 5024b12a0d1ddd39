// Summarises scripts/ablations.sh: per model and MPM setting, the validation accuracy and macro-F1 of each seed
// after its last epoch (no epoch is picked on validation), as mean ± half the range, in a Markdown table. Usage: node scripts/ablation-table.mjs runs/ablations
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const root = process.argv[2] ?? 'runs/ablations';
const groups = new Map();
for (const name of readdirSync(root)) {
  const log = path.join(root, name, 'log.jsonl');
  const match = /^(.*)-mpm-(on|off)-seed(\d+)$/.exec(name);
  if (!match || !existsSync(log)) continue;
  const epochs = readFileSync(log, 'utf8').trim().split('\n').map((line) => JSON.parse(line));
  const last = epochs[epochs.length - 1];
  const key = `${match[1]} | MPM ${match[2]}`;
  groups.set(key, [...(groups.get(key) ?? []), { accuracy: last.val_accuracy, f1: last.val_macro_f1, epochs: epochs.length }]);
}
const stat = (values) => {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const half = (Math.max(...values) - Math.min(...values)) / 2;
  return `${(100 * mean).toFixed(2)} ± ${(100 * half).toFixed(2)}`;
};
console.log('| model | MPM | seeds | epochs | validation accuracy (%) | validation macro-F1 (%) |');
console.log('|---|---|---|---|---|---|');
for (const [key, runs] of [...groups].sort()) {
  const [model, mpm] = key.split(' | ');
  console.log(`| ${model} | ${mpm.replace('MPM ', '')} | ${runs.length} | ${runs.map((r) => r.epochs).join(', ')} | ${stat(runs.map((r) => r.accuracy))} | ${stat(runs.map((r) => r.f1))} |`);
}
