// Summarises scripts/ablations.sh: per model and MPM setting, the validation accuracy and macro-F1 of each seed
// after its last epoch (no epoch is picked on validation), as mean ± half the range, in a Markdown table.
// Runs that stopped before their configured epochs are left out and listed below the table.
// Usage: node scripts/ablation-table.mjs DIR [DIR...]   (default runs/ablations)
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';

const roots = process.argv.length > 2 ? process.argv.slice(2) : ['runs/ablations'];
const groups = new Map();
const incomplete = [];
for (const root of roots) {
  for (const name of readdirSync(root)) {
    const dir = path.join(root, name);
    const match = /^(.*)-mpm-(on|off)-seed(\d+)$/.exec(name);
    if (!match || !existsSync(path.join(dir, 'log.jsonl'))) continue;
    const epochs = readFileSync(path.join(dir, 'log.jsonl'), 'utf8').trim().split('\n').map((line) => JSON.parse(line));
    const planned = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')).epochs;
    if (epochs.length < planned) {
      incomplete.push(`${dir}: ${epochs.length} of ${planned} epochs`);
      continue;
    }
    const last = epochs[epochs.length - 1];
    const key = `${match[1]} | ${match[2]}`;
    groups.set(key, [...(groups.get(key) ?? []), { accuracy: last.val_accuracy, f1: last.val_macro_f1 }]);
  }
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
  console.log(`| ${model} | ${mpm} | ${runs.length} | ${stat(runs.map((r) => r.accuracy))} | ${stat(runs.map((r) => r.f1))} |`);
}
if (incomplete.length > 0) console.log(`\nLeft out, unfinished:\n${incomplete.map((line) => `- ${line}`).join('\n')}`);
