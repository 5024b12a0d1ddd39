// The one error type every per-file decoding failure becomes.

/** Why a file could not become an image; `code` is stable, `message` is for people. */
export type DecodeErrorCode = 'empty' | 'not-image' | 'unsupported' | 'too-large' | 'truncated' | 'corrupt' | 'unreadable' | 'not-a-file';

export class DecodeError extends Error {
  constructor(
    readonly code: DecodeErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'DecodeError';
  }
}

/** The longest side decoded: JPEG's own limit. A strip of millions of rows takes libvips minutes to decode. */
const MAX_SIDE = 65_535;

/** Rejects a declared size over the limits before any pixel is allocated. */
export function checkPixelLimit(width: number, height: number, maxPixels: number): void {
  if (width * height > maxPixels) {
    // Megapixels where that says something; small limits (tests, --max-pixels 1000) in pixels.
    const mp = (n: number) => (n >= 1e5 ? `${(n / 1e6).toFixed(1)} MP` : `${n} pixels`);
    throw new DecodeError(
      'too-large',
      `declared size ${width}×${height} (${mp(width * height)}) exceeds the pixel limit of ${mp(maxPixels)}; ` +
        'raise maxPixels (--max-pixels) only if the file is trusted',
    );
  }
  if (Math.max(width, height) > MAX_SIDE) {
    throw new DecodeError(
      'too-large',
      `declared size ${width}×${height} has a side longer than ${MAX_SIDE} px; no image of one cell is that long (a strip of many images joined?)`,
    );
  }
}
