// Learning-rate schedule: linear warm-up to the peak, then cosine decay to minLr, evaluated per step.

export interface CosineSchedule {
  peakLr: number;
  totalSteps: number;
  warmupSteps: number;
  minLr?: number;
}

export function cosineLr(step: number, schedule: CosineSchedule): number {
  const { peakLr, totalSteps, warmupSteps } = schedule;
  const minLr = schedule.minLr ?? 0;
  if (step < warmupSteps) return (peakLr * (step + 1)) / warmupSteps;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  return minLr + 0.5 * (peakLr - minLr) * (1 + Math.cos(Math.PI * progress));
}
