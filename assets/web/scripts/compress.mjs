// Writes FILE.br and FILE.gz next to every built file, so the daemon serves
// precompressed bytes and never compresses on the request path.
//
// Deterministic on purpose (assets/check-dist.sh compares a fresh build with
// the committed one): fixed levels, and gzip's header carries no name and a
// zero mtime. A compressed copy that is not smaller is not written; the
// daemon then serves the identity bytes.
import { readdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const root = process.argv[2];
if (!root) {
  console.error('usage: node scripts/compress.mjs DIST_DIR');
  process.exit(2);
}

function* files(dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (!name.endsWith('.br') && !name.endsWith('.gz')) yield path;
  }
}

let raw = 0;
let br = 0;
let gz = 0;
for (const path of files(root)) {
  const data = readFileSync(path);
  const variants = {
    br: brotliCompressSync(data, {
      params: {
        [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
        [constants.BROTLI_PARAM_SIZE_HINT]: data.length,
      },
    }),
    gz: gzipSync(data, { level: 9 }),
  };
  raw += data.length;
  for (const [ext, bytes] of Object.entries(variants)) {
    const out = `${path}.${ext}`;
    if (bytes.length < data.length) {
      writeFileSync(out, bytes);
      if (ext === 'br') br += bytes.length;
      else gz += bytes.length;
    } else {
      try {
        unlinkSync(out);
      } catch {
        // not there: fine
      }
    }
  }
}
console.log(`compressed ${root}: ${raw} bytes raw, ${gz} gzip, ${br} brotli`);
