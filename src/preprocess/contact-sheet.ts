// A contact sheet: one row of panels (original, each MPM stage, final), each captioned, so a person can check
// that every stage does what it claims.
import sharp, { type OverlayOptions } from 'sharp';
import type { MpmStage } from './mpm.js';

export interface ContactSheetOptions {
  /** Panel side in pixels; small inputs are enlarged with nearest-neighbour so no pixel is invented. */
  panel?: number;
  title?: string;
}

export async function renderContactSheet(stages: MpmStage[], options: ContactSheetOptions = {}): Promise<Buffer> {
  const panel = options.panel ?? 256;
  const captionHeight = 44;
  const titleHeight = options.title ? 28 : 0;
  const gap = 6;
  const width = stages.length * (panel + gap) + gap;
  const height = titleHeight + panel + captionHeight + gap;
  const composites: OverlayOptions[] = [];
  for (const [i, stage] of stages.entries()) {
    const { width: w, height: h, data } = stage.image;
    const tile = await sharp(data, { raw: { width: w, height: h, channels: 3 } })
      .resize(panel, panel, { fit: 'contain', kernel: w < panel ? 'nearest' : 'lanczos3', background: '#202020' })
      .png()
      .toBuffer();
    const left = gap + i * (panel + gap);
    composites.push({ input: tile, left, top: titleHeight });
    composites.push({ input: captionSvg(stage, panel, captionHeight), left, top: titleHeight + panel });
  }
  if (options.title) {
    composites.push({
      input: Buffer.from(
        `<svg width="${width}" height="${titleHeight}"><text x="${gap}" y="20" font-family="DejaVu Sans, sans-serif" font-size="15" fill="#ffffff">${escapeXml(options.title)}</text></svg>`,
      ),
      left: 0,
      top: 0,
    });
  }
  return sharp({ create: { width, height, channels: 3, background: '#202020' } })
    .composite(composites)
    .png()
    .toBuffer();
}

function captionSvg(stage: MpmStage, width: number, height: number): Buffer {
  const words = stage.caption.split(' ');
  const lines: string[] = [''];
  const perLine = Math.floor(width / 6.6);
  for (const word of words) {
    const line = lines[lines.length - 1];
    if (line.length + word.length + 1 > perLine && line !== '') lines.push(word);
    else lines[lines.length - 1] = line === '' ? word : `${line} ${word}`;
  }
  const text = lines
    .slice(0, 3)
    .map((line, i) => `<text x="2" y="${13 + i * 14}" font-family="DejaVu Sans, sans-serif" font-size="11" fill="#e0e0e0">${escapeXml(line)}</text>`)
    .join('');
  return Buffer.from(`<svg width="${width}" height="${height}">${text}</svg>`);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
