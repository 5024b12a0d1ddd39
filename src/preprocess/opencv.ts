// OpenCV itself (the WebAssembly build on npm), so CLAHE, GaussianBlur, morphology and Lab conversion have OpenCV's
// semantics by construction rather than by imitation. Loaded once per thread (about 0.25 s).
import { createRequire } from 'node:module';
import type * as OpenCvTypes from '@techstark/opencv-js';

export type OpenCv = typeof OpenCvTypes;

let loading: Promise<{ cv: OpenCv }> | undefined;

export function loadOpenCv(): Promise<{ cv: OpenCv }> {
  loading ??= new Promise<{ cv: OpenCv }>((resolve, reject) => {
    try {
      const cv = createRequire(import.meta.url)('@techstark/opencv-js') as OpenCv & { onRuntimeInitialized?: () => void };
      // The module object becomes thenable once initialised; a promise resolved with it would never settle,
      // so it only ever travels inside a wrapper.
      if (typeof cv.Mat === 'function') resolve({ cv });
      else cv.onRuntimeInitialized = () => resolve({ cv });
    } catch (error) {
      reject(new Error(`cannot load OpenCV (@techstark/opencv-js): ${(error as Error).message}; run npm ci`));
    }
  });
  return loading;
}
