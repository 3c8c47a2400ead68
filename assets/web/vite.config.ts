// Builds the app into ../dist, which the daemon embeds (src/http/assets.rs).
//
// Two properties matter to the daemon and to CI, and both are set here:
// - hashed file names under assets/, so the daemon can serve them with
//   `immutable` caching (index.html itself is the only unhashed file);
// - a deterministic output, so `assets/check-dist.sh` can compare the
//   committed dist with a fresh build byte for byte.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  // esbuild's own JSX transform (React 17+ automatic runtime): no plugin needed.
  esbuild: { jsx: 'automatic', legalComments: 'none' },
  build: {
    outDir: '../dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    sourcemap: false,
    // The polyfill is an inline-free module, but every browser we support has
    // modulepreload; leaving it out keeps the bundle smaller.
    modulePreload: { polyfill: false },
    // Never inline assets as data: URLs into JS/CSS; the CSP allows data: only for images.
    assetsInlineLimit: 0,
    reportCompressedSize: false,
    chunkSizeWarningLimit: 300,
  },
});
