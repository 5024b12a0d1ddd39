// The image operations MPM is built from, each one OpenCV call with OpenCV's defaults made explicit.
// Inputs and outputs are plain typed arrays; every Mat is freed before returning, since the WebAssembly heap has no GC.
import type { Mat } from '@techstark/opencv-js';
import type { RgbImage } from './image.js';
import { loadOpenCv, type OpenCv } from './opencv.js';

export interface GrayImage {
  width: number;
  height: number;
  data: Uint8Array;
}

export interface FloatImage {
  width: number;
  height: number;
  data: Float32Array;
}

/** 8-bit CIELAB as OpenCV stores it: L = L*·255/100, a = a* + 128, b = b* + 128, each a plane. */
export interface LabImage {
  width: number;
  height: number;
  L: Uint8Array;
  a: Uint8Array;
  b: Uint8Array;
}

export type ImageOps = ReturnType<typeof makeOps>;

export async function loadImageOps(): Promise<ImageOps> {
  const { cv } = await loadOpenCv();
  return makeOps(cv);
}

function makeOps(cv: OpenCv) {
  const kernels = new Map<number, Mat>();
  const ellipse = (size: number): Mat => {
    let kernel = kernels.get(size);
    if (!kernel) {
      kernel = cv.getStructuringElement(cv.MORPH_ELLIPSE, new cv.Size(size, size));
      kernels.set(size, kernel);
    }
    return kernel;
  };

  /** Runs `body` with Mats that are all deleted afterwards, whatever happens. */
  const withMats = <T>(count: number, body: (...mats: Mat[]) => T): T => {
    const mats = Array.from({ length: count }, () => new cv.Mat());
    try {
      return body(...mats);
    } finally {
      for (const mat of mats) mat.delete();
    }
  };

  const fromGray = (mat: Mat, image: GrayImage) => {
    mat.create(image.height, image.width, cv.CV_8UC1);
    mat.data.set(image.data);
  };

  const morphology = (image: GrayImage, op: number, size: number): GrayImage => {
    checkKernelSize(size);
    return withMats(2, (src, dst) => {
      fromGray(src, image);
      // Default border: pixels outside the image take no part in the min/max, as in OpenCV.
      cv.morphologyEx(src, dst, op, ellipse(size));
      return { width: image.width, height: image.height, data: dst.data.slice() };
    });
  };

  return {
    /** cvtColor(RGB → Lab), 8-bit, with the sRGB transfer curve and D65 white. */
    rgbToLab(image: RgbImage): LabImage {
      return withMats(2, (src, dst) => {
        src.create(image.height, image.width, cv.CV_8UC3);
        src.data.set(image.data);
        cv.cvtColor(src, dst, cv.COLOR_RGB2Lab);
        const n = image.width * image.height;
        const lab = dst.data;
        const L = new Uint8Array(n);
        const a = new Uint8Array(n);
        const b = new Uint8Array(n);
        for (let i = 0, j = 0; i < n; i++, j += 3) {
          L[i] = lab[j];
          a[i] = lab[j + 1];
          b[i] = lab[j + 2];
        }
        return { width: image.width, height: image.height, L, a, b };
      });
    },

    /** cvtColor(Lab → RGB), 8-bit. */
    labToRgb(lab: LabImage): RgbImage {
      return withMats(2, (src, dst) => {
        src.create(lab.height, lab.width, cv.CV_8UC3);
        const interleaved = src.data;
        for (let i = 0, j = 0; i < lab.L.length; i++, j += 3) {
          interleaved[j] = lab.L[i];
          interleaved[j + 1] = lab.a[i];
          interleaved[j + 2] = lab.b[i];
        }
        cv.cvtColor(src, dst, cv.COLOR_Lab2RGB);
        return { width: lab.width, height: lab.height, data: dst.data.slice() };
      });
    },

    /** createCLAHE(clipLimit, (tiles, tiles)).apply(src): tile histograms clipped and redistributed, mappings interpolated bilinearly. */
    clahe(image: GrayImage, clipLimit: number, tiles: number): GrayImage {
      if (!(clipLimit >= 0) || !Number.isInteger(tiles) || tiles < 1)
        throw new Error(`CLAHE needs clipLimit ≥ 0 and an integer tile count ≥ 1, got ${clipLimit}, ${tiles}`);
      const clahe = new cv.CLAHE(clipLimit, new cv.Size(tiles, tiles));
      try {
        return withMats(2, (src, dst) => {
          fromGray(src, image);
          clahe.apply(src, dst);
          return { width: image.width, height: image.height, data: dst.data.slice() };
        });
      } finally {
        clahe.delete();
      }
    },

    /** GaussianBlur(float32, ksize (0,0) → 8σ+1 taps, sigmaX = sigmaY = σ, BORDER_REFLECT_101). */
    gaussianBlur(image: FloatImage, sigma: number): FloatImage {
      if (!(sigma > 0)) throw new Error(`Gaussian sigma must be > 0, got ${sigma}`);
      return withMats(2, (src, dst) => {
        src.create(image.height, image.width, cv.CV_32FC1);
        src.data32F.set(image.data);
        cv.GaussianBlur(src, dst, new cv.Size(0, 0), sigma, sigma, cv.BORDER_REFLECT_101);
        return { width: image.width, height: image.height, data: dst.data32F.slice() };
      });
    },

    /** resize() of a float plane: INTER_AREA when shrinking (a true average), INTER_LINEAR when enlarging. */
    resizeFloat(image: FloatImage, width: number, height: number): FloatImage {
      return withMats(2, (src, dst) => {
        src.create(image.height, image.width, cv.CV_32FC1);
        src.data32F.set(image.data);
        const shrinking = width <= image.width && height <= image.height;
        cv.resize(src, dst, new cv.Size(width, height), 0, 0, shrinking ? cv.INTER_AREA : cv.INTER_LINEAR);
        return { width, height, data: dst.data32F.slice() };
      });
    },

    /** morphologyEx(MORPH_TOPHAT) with an ellipse: src − opening(src), the bright details smaller than the element. */
    topHat: (image: GrayImage, size: number) => morphology(image, cv.MORPH_TOPHAT, size),

    /** morphologyEx(MORPH_BLACKHAT) with an ellipse: closing(src) − src, the dark details smaller than the element. */
    blackHat: (image: GrayImage, size: number) => morphology(image, cv.MORPH_BLACKHAT, size),

    /** getStructuringElement(MORPH_ELLIPSE, (size, size)) as 0/1 values, row by row. */
    ellipseKernel(size: number): GrayImage {
      checkKernelSize(size);
      return { width: size, height: size, data: ellipse(size).data.slice() };
    },
  };
}

function checkKernelSize(size: number): void {
  if (!Number.isInteger(size) || size < 1 || size % 2 === 0) throw new Error(`structuring element size must be a positive odd integer, got ${size}`);
}
