// Bad inputs shared by the decoder's, the service's and the benchmarks' abuse checks.
import sharp from 'sharp';

/** PNG CRC-32, so a forged header is still a well-formed PNG. */
export function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** A small PNG whose header declares `side` × `side` pixels: a decompression bomb, refused from its header. */
export async function pngBomb(side = 100_000): Promise<Buffer> {
  const png = await sharp({ create: { width: 24, height: 16, channels: 3, background: { r: 200, g: 40, b: 40 } } })
    .png()
    .toBuffer();
  png.writeUInt32BE(side, 16); // IHDR width
  png.writeUInt32BE(side, 20); // IHDR height
  png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
  return png;
}

/** Text that is not an image. */
export const NOT_AN_IMAGE = Buffer.from('file,label\ncell.jpg,neutrophil\n');

/** A multipart/form-data body with one file part, optionally cut before its closing boundary. */
export function multipartBody(
  parts: { name: string; filename: string; bytes: Uint8Array }[],
  options: { truncate?: boolean } = {},
): { body: Buffer; contentType: string } {
  const boundary = '----hemato-test-boundary';
  const chunks = parts.flatMap((part) => [
    Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"; filename="${part.filename}"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    ),
    Buffer.from(part.bytes),
    Buffer.from('\r\n'),
  ]);
  const whole = Buffer.concat([...chunks, Buffer.from(`--${boundary}--\r\n`)]);
  const body = options.truncate ? whole.subarray(0, Math.floor(whole.length * 0.6)) : whole;
  return { body, contentType: `multipart/form-data; boundary=${boundary}` };
}
