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

/** Rejects a declared size over the limit before any pixel is allocated. */
export function checkPixelLimit(width: number, height: number, maxPixels: number): void {
  if (width * height > maxPixels) {
    const mp = (n: number) => `${(n / 1e6).toFixed(1)} MP`;
    throw new DecodeError(
      'too-large',
      `declared size ${width}×${height} (${mp(width * height)}) exceeds the pixel limit of ${mp(maxPixels)}; ` +
        'raise maxPixels (--max-pixels) only if the file is trusted',
    );
  }
}
