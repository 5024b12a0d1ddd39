import type { Command } from 'commander';
import { BUNDLED_MODEL } from '../../api/classifier.js';
import { type ModelCard, modelCard, type ModelFile, readModelFile } from '../../api/model-info.js';
import { escapeControl, fsReason } from '../../data/files.js';
import type { Rgb } from '../../data/prepare.js';
import { CliError, printJson } from '../output.js';

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description(
      "show a model file's card: architecture, classes, input and preprocessing, calibration, out-of-distribution detector, provenance, size and sha256",
    )
    .argument('[model]', 'a hemato model file (default: the bundled model)')
    .option('--json', 'print one JSON document on stdout')
    .action(async (file: string | undefined, options: { json?: boolean }) => {
      const card = modelCard(await readCard(file ?? BUNDLED_MODEL));
      if (options.json) printJson(card);
      else printCard(card);
    });
}

async function readCard(file: string): Promise<ModelFile> {
  try {
    return await readModelFile(file);
  } catch (error) {
    if (!(error as NodeJS.ErrnoException).code) throw error;
    const bundled = file === BUNDLED_MODEL ? 'the bundled model ' : '';
    throw new CliError(`cannot read ${bundled}${file}: ${await fsReason(file, error)}`);
  }
}

type Card = ModelCard;

function printCard(card: Card): void {
  const { preprocessing: p, out_of_distribution: ood } = card;
  const lines: [string, string][] = [
    ['model', `${card.model_info.name} (${card.file})`],
    ['architecture', `${card.architecture}, ${card.dtype} weights`],
    ['classes', `${card.classes.length}: ${card.classes.join(', ')}`],
    ['input', `${card.input_size} px from ${p.field === null ? 'the largest centred square' : `a centred ${p.field} px field`}`],
    [
      'scale',
      p.scale
        ? `brought to the training data's: red cell ${p.scale.rbcDiameter.toFixed(1)} px (${p.scale.rbcDiameterUm} µm), nucleus ${p.scale.nucleusExtent.toFixed(1)} px`
        : "none: the file's pixels as they are",
    ],
    ['background', backgroundLine(p.background)],
    [
      'stain',
      p.stain
        ? `strength brought into the training range: haematoxylin ${p.stain.haematoxylin.map((v) => v.toFixed(2)).join('–')}, eosin ${p.stain.eosin.map((v) => v.toFixed(2)).join('–')}${
            p.stain.typical ? `; out-of-distribution images paler than ${p.stain.typical.map((v) => v.toFixed(2)).join(' / ')} get a second look` : ''
          }`
        : 'none: stain strength as it is',
    ],
    ['MPM', p.mpm ? 'on' : 'off'],
    ['temperature', card.temperature === null ? 'none (not calibrated)' : card.temperature.toFixed(4)],
    ['uncertainty', card.uncertainty_threshold === null ? 'no threshold stored (0.5 applies)' : `flagged below ${card.uncertainty_threshold.toFixed(4)}`],
    [
      'test-time aug.',
      card.tta
        ? `temperature ${card.tta.temperature.toFixed(4)}, flagged below ${card.tta.uncertainty_threshold.toFixed(4)}`
        : "the single view's calibration applies",
    ],
    [
      'out-of-distribution',
      ood
        ? `${ood.kind} detector on ${ood.pooling} features, threshold ${ood.threshold.toFixed(2)} (flags ${(100 * ood.validation_flagged).toFixed(1)} % of validation images)`
        : 'no detector',
    ],
    [
      'scale from features',
      card.feature_scale
        ? `estimated from ${card.feature_scale.features} ${card.feature_scale.pooling} features where nothing measurable sets it (a second look)`
        : 'not fitted',
    ],
    ['size', `${(card.bytes / 2 ** 20).toFixed(1)} MiB (${card.bytes} bytes)`],
    ['sha256', card.model_info.sha256],
    ['created', card.model_info.created],
  ];
  // The file's own words (class names, provenance) are escaped: control characters in them would drive the terminal.
  for (const [key, value] of lines) process.stdout.write(`${key.padEnd(20)} ${escapeControl(value)}\n`);
  const provenance = Object.entries(card.provenance);
  process.stdout.write(`provenance${provenance.length ? '' : '           none recorded'}\n`);
  for (const [key, value] of provenance)
    process.stdout.write(`  ${escapeControl(key).padEnd(18)} ${escapeControl(typeof value === 'string' ? value : JSON.stringify(value))}\n`);
}

function backgroundLine(colours: readonly Rgb[] | null): string {
  if (!colours) return 'none: colours as they are';
  const rgb = (c: Rgb) => `rgb(${c.map((v) => Math.round(v)).join(', ')})`;
  return colours.length === 1
    ? `white-balanced to ${rgb(colours[0])}`
    : `white-balanced to the closest of ${colours.length} training background colours, or else to their median`;
}
