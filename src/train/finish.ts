// The end of a run: reload the best weights, fit the temperature and the uncertainty threshold on validation,
// save the calibrated model and write the report.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type * as E from '../engine/index.js';
import { chooseUncertaintyThreshold, fitTemperature, softmaxRows } from '../eval/calibration.js';
import { evaluateScores, type Evaluation, imagePredictions, validationRecord, writeReport } from '../eval/evaluation.js';
import { loadModel, saveModel } from '../models/io.js';
import type { TrainingData } from './data.js';
import { LOG_FILE, type TrainConfig } from './trainer.js';
import { predictLogits } from './validate.js';

export interface RunSummary {
  model: string;
  report: string;
  temperature: number;
  uncertainty_threshold: number;
  split_hash: string;
  validation: Evaluation;
}

export async function finishRun(options: {
  runDir: string;
  data: TrainingData;
  config: TrainConfig;
  device: E.Device;
  provenance: Record<string, unknown>;
}): Promise<RunSummary> {
  const { runDir, data, config, device } = options;
  const { model, metadata } = await loadModel(path.join(runDir, 'best.safetensors'), { device });
  try {
    const k = metadata.classes.length;
    const logits = predictLogits(model, data.set, data.val, {
      batchSize: config.evalBatchSize,
      normalization: config.normalization,
      precision: config.precision,
      device,
    });
    const labels = Int32Array.from(data.val, (i) => data.set.labels[i]);
    const temperature = fitTemperature(logits, labels, k);
    const threshold = chooseUncertaintyThreshold(softmaxRows(logits, labels.length, k, temperature), labels, k);
    // The validation images were prepared in memory: only the confidence threshold can flag them here.
    const judge = {
      classes: metadata.classes,
      temperature,
      uncertaintyThreshold: threshold,
      reasons: (top: number) => (top < threshold ? ['low-confidence'] : []),
    };
    const scored = { logits, labels, files: Array.from(data.val, (i) => data.files[i]), failed: [] };
    const predictions = imagePredictions(scored, judge);
    const validation = evaluateScores(scored, judge, predictions);
    const file = path.join(runDir, 'model.safetensors');
    const provenance = { ...options.provenance, split_hash: data.splitHash, validation: validationRecord(validation, data.splitHash) };
    await saveModel(file, model, { ...metadata, temperature, uncertaintyThreshold: threshold, provenance });
    const history = (await readFile(path.join(runDir, LOG_FILE), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    // The grid of errors shows the validation images as the model saw them, prepared in memory.
    const { images, size } = data.set;
    const pixels = size * size * 3;
    const report = await writeReport(runDir, `Validation of ${metadata.architecture} (split ${data.splitHash.slice(0, 12)})`, validation, {
      data: `${validation.n} validation images of split ${data.splitHash.slice(0, 12)}, as the model sees them (prepared, ${size} px).`,
      predictions,
      history,
      image: async (i) => ({ width: size, height: size, data: images.subarray(data.val[i] * pixels, (data.val[i] + 1) * pixels) }),
    });
    return { model: file, report, temperature, uncertainty_threshold: threshold, split_hash: data.splitHash, validation };
  } finally {
    model.dispose();
  }
}
