// Compares the arms of scripts/paper-scale.sh: for each, the epochs it finished, its best validation accuracy on
// the pack's images (the trainer's log) and on the original files (hemato eval), and for the first two arms the
// difference against twice its standard error. Prints one JSON line.
//   node scripts/paper-scale-summary.mjs OUT ARCH...
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

const [out, ...archs] = process.argv.slice(2);
if (!out || archs.length === 0) {
  console.error('usage: node scripts/paper-scale-summary.mjs OUT ARCH...');
  process.exit(2);
}

/** The validation images of an arm's run, from the record of what it trained on. */
function validationCount(arch) {
  const file = path.join(out, arch, 'data.json');
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).rows.filter((row) => row[2] === 'val').length : null;
}

function arm(arch) {
  const logFile = path.join(out, arch, 'log.jsonl');
  const epochs = existsSync(logFile)
    ? readFileSync(logFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line))
        .filter((entry) => typeof entry.val_accuracy === 'number')
    : [];
  const best = epochs.filter((e) => e.best).at(-1);
  const filesFile = path.join(out, `${arch}.files.json`);
  const files = existsSync(filesFile) ? JSON.parse(readFileSync(filesFile, 'utf8')) : null;
  return {
    arch,
    epochs: epochs.length,
    finished: existsSync(path.join(out, arch, 'model.safetensors')),
    pack: best ? { epoch: best.epoch, accuracy: best.val_accuracy, macro_f1: best.val_macro_f1 } : null,
    validation_images: validationCount(arch),
    files: files ? { n: files.n, accuracy: files.accuracy, macro_f1: files.macro_f1 } : null,
  };
}

/** The difference of two accuracies on n images each, with the standard error of an unpaired difference. */
function compare(a, b, n) {
  if (a === undefined || b === undefined || !n) return null;
  const se = Math.sqrt((a * (1 - a)) / n + (b * (1 - b)) / n);
  return { difference: a - b, standard_error: se, beyond_two_se: a - b > 2 * se };
}

const arms = archs.map(arm);
const summary = { arms };
if (arms.length >= 2) {
  const [first, second] = arms;
  summary.comparison = {
    first: first.arch,
    second: second.arch,
    on_pack: compare(first.pack?.accuracy, second.pack?.accuracy, first.validation_images),
    on_files: compare(first.files?.accuracy, second.files?.accuracy, first.files?.n),
  };
}
console.log(JSON.stringify(summary));
