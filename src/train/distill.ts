// Knowledge distillation: teachers' soft labels for every training image, computed once per run and stored in the
// run folder, and the loss that pulls the student's softened outputs towards them. A teacher is one or more trained
// hemato models, each averaged over the 8 flips and 90° rotations of an image, so its labels hold for any of the
// views the augmentation shows the student.
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import * as E from '../engine/index.js';
import { DIHEDRAL, type ImageSet, type Normalization, makeBatch } from '../data/batches.js';
import { readFailure, readRegularFile } from '../data/files.js';
import { writeFileAtomic } from '../engine/atomic-write.js';
import { countNonFinite, NonFiniteModelError } from '../eval/finite.js';
import { loadModel } from '../models/io.js';
import type { Mix } from './mix.js';
import type { SoftLabels } from './step.js';

export interface DistillSettings {
  /** Trained hemato model files; their probabilities are averaged. */
  teachers: string[];
  /** The soft labels' share of the loss; the true labels keep the rest. */
  weight: number;
  /** Softmax temperature of both the teachers' labels and the student's outputs in that share. */
  temperature: number;
}

export const TEACHER_FILE = 'teacher-targets.safetensors';

/**
 * The teachers' averaged probabilities at the temperature [n × classes], row i for image i of the set (rows of images
 * outside `indices` stay zero). Each teacher must have the set's classes, and give finite outputs: NaN labels would
 * only make the student's loss NaN.
 */
export async function computeTeacherTargets(
  settings: DistillSettings,
  data: ImageSet,
  indices: Int32Array,
  options: { normalization: Normalization; device: E.Device; precision: E.Precision; batchSize: number; onProgress?: (done: number, total: number) => void },
): Promise<Float32Array> {
  const k = data.classes.length;
  const n = data.labels.length;
  const sum = new Float32Array(n * k);
  for (const [t, file] of settings.teachers.entries()) {
    const { model, metadata } = await loadModel(file, { device: options.device });
    try {
      if (metadata.classes.join() !== data.classes.join())
        throw new Error(`the teacher ${file} has the classes ${metadata.classes.join(', ')}, and this run ${data.classes.join(', ')}`);
      for (let start = 0; start < indices.length; start += options.batchSize) {
        const batch = indices.subarray(start, Math.min(indices.length, start + options.batchSize));
        const probabilities = E.tidy(() =>
          E.noGrad(() => {
            const { x } = makeBatch(data, batch, { normalization: options.normalization, device: options.device });
            const views = DIHEDRAL.map((view) => E.withPrecision(options.precision, options.device, () => model.forward(view(x))).float());
            return E.F.softmax(E.stack(views).mean([0]).div(settings.temperature), 1).data() as Float32Array;
          }),
        );
        if (countNonFinite(probabilities) > 0)
          throw new NonFiniteModelError(
            `the teacher ${file} gives NaN or infinite outputs on the training images (at ${options.precision}); its labels are not kept: the file is damaged or its outputs overflow, so leave it out or use another teacher`,
          );
        batch.forEach((image, row) => {
          for (let c = 0; c < k; c++) sum[image * k + c] += probabilities[row * k + c] / settings.teachers.length;
        });
        options.onProgress?.(t * indices.length + start + batch.length, settings.teachers.length * indices.length);
      }
    } finally {
      model.dispose();
    }
  }
  return sum;
}

/** What the stored targets were computed from: the teachers' bytes, the temperature and the images. */
async function targetsKey(settings: DistillSettings, data: ImageSet, indices: Int32Array): Promise<string> {
  const hash = createHash('sha256');
  for (const file of settings.teachers)
    hash.update(
      await readRegularFile(file, Number.MAX_SAFE_INTEGER).catch((error: Error) => {
        throw new Error(`cannot read the teacher ${file}: ${readFailure(error)}`);
      }),
    );
  hash.update(`${settings.temperature}:${data.size}:${data.classes.join()}`);
  hash.update(new Uint8Array(indices.buffer, indices.byteOffset, indices.byteLength));
  hash.update(data.images);
  return hash.digest('hex');
}

/**
 * The run's teacher targets: read from the run folder where they were stored for the same teachers, temperature and
 * images, otherwise computed and stored there (atomically), so a resumed run does not compute them again.
 */
export async function teacherTargets(
  runDir: string,
  settings: DistillSettings,
  data: ImageSet,
  indices: Int32Array,
  options: Parameters<typeof computeTeacherTargets>[3] & { write: boolean; note: (message: string) => void },
): Promise<Float32Array> {
  const file = path.join(runDir, TEACHER_FILE);
  const key = await targetsKey(settings, data, indices);
  if (existsSync(file)) {
    const { tensors, metadata } = await E.loadSafetensors(file);
    try {
      const stored = metadata.key === key ? (tensors.get('targets')?.data() as Float32Array | undefined) : undefined;
      // Stored labels that are not all finite are not used: computed again, the teacher that gives them is named.
      if (stored && countNonFinite(stored) === 0) {
        options.note(`distillation: the teachers' labels from ${file}`);
        return stored;
      }
    } finally {
      E.dispose([...tensors.values()]);
    }
  }
  options.note(`distillation: labelling ${indices.length} training images with ${settings.teachers.length} teacher(s), 8 views each`);
  const targets = await computeTeacherTargets(settings, data, indices, options);
  if (options.write) {
    const tensor = E.tensor(targets, [data.labels.length, data.classes.length]);
    try {
      await writeFileAtomic(file, [E.serializeSafetensors({ targets: tensor }, { key })]);
    } finally {
      tensor.dispose();
    }
  }
  return targets;
}

/** The rows of the targets for a batch of images, as a tensor on the device. */
export function targetsOf(targets: Float32Array, classes: number, images: Int32Array, device: E.Device): E.Tensor {
  const rows = new Float32Array(images.length * classes);
  images.forEach((image, row) => rows.set(targets.subarray(image * classes, (image + 1) * classes), row * classes));
  return E.tensor(rows, [images.length, classes]).to(device);
}

/**
 * Hinton's distillation loss: T² times the cross-entropy of the student's outputs softened by T against the soft
 * labels (the KL divergence up to the labels' own entropy, which has no gradient), averaged over the batch.
 */
export function distillationLoss(logits: E.Tensor, targets: E.Tensor, temperature: number): E.Tensor {
  return E.F.logSoftmax(logits.div(temperature), 1)
    .mul(targets)
    .sum([1])
    .mean()
    .mul(-(temperature * temperature));
}

/** A batch's soft labels; for a mixed batch, blended as its images were (see mix.ts). */
export function softLabels(
  distillation: { targets: Float32Array; weight: number; temperature: number },
  images: Int32Array,
  classes: number,
  device: E.Device,
  mix?: Mix,
): SoftLabels {
  const { weight, temperature } = distillation;
  const own = targetsOf(distillation.targets, classes, images, device);
  if (!mix) return { targets: own, weight, temperature };
  const blended = E.tidy(() => own.mul(1 - mix.mixedWith.weight).add(own.flip([0]).mul(mix.mixedWith.weight)));
  own.dispose();
  return { targets: blended, weight, temperature };
}
