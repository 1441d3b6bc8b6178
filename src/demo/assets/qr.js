// A small QR code encoder: byte mode, error correction level M, versions 1 to 10 (up to 213 bytes, which
// is plenty for a contact link). Written for the demo from the QR specification (ISO/IEC 18004): encode the
// bytes, add Reed-Solomon error correction per block, interleave, place the bits in the zigzag, and keep
// the mask with the lowest penalty.

// Per version (index 1..10), level M: error correction codewords per block, then the data codewords of
// each block.
const BLOCKS = [
  null,
  [10, [16]],
  [16, [28]],
  [26, [44]],
  [18, [32, 32]],
  [24, [43, 43]],
  [16, [27, 27, 27, 27]],
  [18, [31, 31, 31, 31]],
  [22, [38, 38, 39, 39]],
  [22, [36, 36, 36, 37, 37]],
  [26, [43, 43, 43, 43, 44]],
];
const ALIGNMENT = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34], [6, 22, 38], [6, 24, 42], [6, 26, 46], [6, 28, 50]];

// Arithmetic in GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1.
const EXP = new Uint8Array(512);
const LOG = new Uint8Array(256);
for (let i = 0, x = 1; i < 255; i++) {
  EXP[i] = x;
  LOG[x] = i;
  x <<= 1;
  if (x & 0x100) x ^= 0x11d;
}
for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
const mul = (a, b) => (a === 0 || b === 0 ? 0 : EXP[LOG[a] + LOG[b]]);

/** The error correction codewords for `data`: the remainder of data·x^n divided by the generator. */
function reedSolomon(data, n) {
  let generator = [1];
  for (let i = 0; i < n; i++) {
    const next = new Array(generator.length + 1).fill(0);
    generator.forEach((g, j) => {
      next[j] ^= g;
      next[j + 1] ^= mul(g, EXP[i]);
    });
    generator = next;
  }
  const remainder = new Array(n).fill(0);
  for (const byte of data) {
    const factor = byte ^ remainder.shift();
    remainder.push(0);
    for (let j = 0; j < n; j++) remainder[j] ^= mul(generator[j + 1], factor);
  }
  return remainder;
}

/** The codewords of `bytes` in `version`, data and error correction interleaved as the symbol holds them. */
function codewords(bytes, version) {
  const [eccLength, blockSizes] = BLOCKS[version];
  const capacity = blockSizes.reduce((a, b) => a + b, 0);
  const bits = [];
  const put = (value, length) => {
    for (let i = length - 1; i >= 0; i--) bits.push((value >>> i) & 1);
  };
  put(0b0100, 4);
  put(bytes.length, version < 10 ? 8 : 16);
  bytes.forEach((b) => put(b, 8));
  put(0, Math.min(4, capacity * 8 - bits.length));
  while (bits.length % 8) bits.push(0);
  const data = [];
  for (let i = 0; i < bits.length; i += 8) data.push(bits.slice(i, i + 8).reduce((a, b) => (a << 1) | b, 0));
  for (let pad = 0xec; data.length < capacity; pad ^= 0xec ^ 0x11) data.push(pad);

  const blocks = [];
  let at = 0;
  for (const size of blockSizes) {
    const block = data.slice(at, at + size);
    at += size;
    blocks.push({ data: block, ecc: reedSolomon(block, eccLength) });
  }
  const out = [];
  for (let i = 0; i < Math.max(...blockSizes); i++) blocks.forEach((b) => i < b.data.length && out.push(b.data[i]));
  for (let i = 0; i < eccLength; i++) blocks.forEach((b) => out.push(b.ecc[i]));
  return out;
}

/** A BCH code: `value` followed by its remainder modulo `generator` (of degree `degree`). */
function bch(value, generator, degree) {
  let remainder = value << degree;
  for (let i = 31 - Math.clz32(remainder); i >= degree; i--) {
    if ((remainder >>> i) & 1) remainder ^= generator << (i - degree);
  }
  return (value << degree) | remainder;
}

const MASKS = [
  (x, y) => (x + y) % 2 === 0,
  (x, y) => y % 2 === 0,
  (x) => x % 3 === 0,
  (x, y) => (x + y) % 3 === 0,
  (x, y) => (Math.floor(y / 2) + Math.floor(x / 3)) % 2 === 0,
  (x, y) => ((x * y) % 2) + ((x * y) % 3) === 0,
  (x, y) => (((x * y) % 2) + ((x * y) % 3)) % 2 === 0,
  (x, y) => (((x + y) % 2) + ((x * y) % 3)) % 2 === 0,
];

/** A square grid of modules; `reserved` marks the function patterns, which data and masks leave alone. */
class Grid {
  constructor(size) {
    this.size = size;
    this.dark = new Uint8Array(size * size);
    this.reserved = new Uint8Array(size * size);
  }

  set(x, y, dark) {
    this.dark[y * this.size + x] = dark ? 1 : 0;
    this.reserved[y * this.size + x] = 1;
  }

  get(x, y) {
    return this.dark[y * this.size + x] === 1;
  }
}

function drawFunctionPatterns(grid, version) {
  const { size } = grid;
  for (const [cx, cy] of [[3, 3], [size - 4, 3], [3, size - 4]]) {
    for (let dy = -4; dy <= 4; dy++) {
      for (let dx = -4; dx <= 4; dx++) {
        const x = cx + dx;
        const y = cy + dy;
        if (x < 0 || y < 0 || x >= size || y >= size) continue;
        const ring = Math.max(Math.abs(dx), Math.abs(dy));
        grid.set(x, y, ring !== 2 && ring !== 4);
      }
    }
  }
  for (let i = 8; i < size - 8; i++) {
    grid.set(6, i, i % 2 === 0);
    grid.set(i, 6, i % 2 === 0);
  }
  const centres = ALIGNMENT[version];
  for (const cx of centres) {
    for (const cy of centres) {
      const nearFinder = (cx === 6 && cy === 6) || (cx === 6 && cy === size - 7) || (cx === size - 7 && cy === 6);
      if (nearFinder) continue;
      for (let dy = -2; dy <= 2; dy++) {
        for (let dx = -2; dx <= 2; dx++) grid.set(cx + dx, cy + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
      }
    }
  }
  drawFormat(grid, 0); // reserves the format areas; drawn again with the chosen mask
  if (version >= 7) {
    const bits = bch(version, 0x1f25, 12);
    for (let i = 0; i < 18; i++) {
      const dark = ((bits >>> i) & 1) === 1;
      const a = size - 11 + (i % 3);
      const b = Math.floor(i / 3);
      grid.set(a, b, dark);
      grid.set(b, a, dark);
    }
  }
}

/** The 15 format bits (level M is 0b00) in both copies, and the dark module. */
function drawFormat(grid, mask) {
  const { size } = grid;
  const bits = bch(mask, 0x537, 10) ^ 0x5412;
  const bit = (i) => ((bits >>> i) & 1) === 1;
  for (let i = 0; i <= 5; i++) grid.set(8, i, bit(i));
  grid.set(8, 7, bit(6));
  grid.set(8, 8, bit(7));
  grid.set(7, 8, bit(8));
  for (let i = 9; i < 15; i++) grid.set(14 - i, 8, bit(i));
  for (let i = 0; i < 8; i++) grid.set(size - 1 - i, 8, bit(i));
  for (let i = 8; i < 15; i++) grid.set(8, size - 15 + i, bit(i));
  grid.set(8, size - 8, true);
}

/** Places the codewords' bits in the two-column zigzag from the bottom right, skipping the timing column. */
function drawData(grid, words) {
  const { size } = grid;
  let index = 0;
  for (let right = size - 1; right >= 1; right -= 2) {
    if (right === 6) right = 5;
    const upward = ((size - 1 - right) >> 1) % 2 === 0;
    for (let step = 0; step < size; step++) {
      const y = upward ? size - 1 - step : step;
      for (const x of [right, right - 1]) {
        if (grid.reserved[y * size + x]) continue;
        const word = words[index >> 3];
        grid.dark[y * size + x] = word !== undefined && (word >>> (7 - (index & 7))) & 1 ? 1 : 0;
        index++;
      }
    }
  }
}

function applyMask(grid, mask) {
  const { size } = grid;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      if (!grid.reserved[y * size + x] && MASKS[mask](x, y)) grid.dark[y * size + x] ^= 1;
    }
  }
}

/** The specification's penalty: runs, 2×2 blocks, finder-like patterns and imbalance of dark modules. */
function penalty(grid) {
  const { size } = grid;
  let score = 0;
  const lines = [];
  for (let i = 0; i < size; i++) {
    lines.push(Array.from({ length: size }, (_, j) => grid.get(j, i)));
    lines.push(Array.from({ length: size }, (_, j) => grid.get(i, j)));
  }
  for (const line of lines) {
    let run = 1;
    for (let i = 1; i <= size; i++) {
      if (i < size && line[i] === line[i - 1]) {
        run++;
      } else {
        if (run >= 5) score += run - 2;
        run = 1;
      }
    }
    const text = line.map((d) => (d ? '1' : '0')).join('');
    score += 40 * (text.split('10111010000').length - 1 + text.split('00001011101').length - 1);
  }
  for (let y = 0; y < size - 1; y++) {
    for (let x = 0; x < size - 1; x++) {
      const d = grid.get(x, y);
      if (d === grid.get(x + 1, y) && d === grid.get(x, y + 1) && d === grid.get(x + 1, y + 1)) score += 3;
    }
  }
  const darkCount = grid.dark.reduce((a, b) => a + b, 0);
  score += 10 * Math.floor(Math.abs((darkCount * 20) / (size * size) - 10));
  return score;
}

/** Encodes `text` (UTF-8); returns the grid of modules: `size` and `get(x, y)` (true: dark). */
export function encodeQr(text) {
  const bytes = Array.from(new TextEncoder().encode(text));
  let version = 1;
  while (version <= 10) {
    const capacity = BLOCKS[version][1].reduce((a, b) => a + b, 0);
    if (4 + (version < 10 ? 8 : 16) + bytes.length * 8 <= capacity * 8) break;
    version++;
  }
  if (version > 10) throw new Error('text too long for this QR encoder');
  const words = codewords(bytes, version);
  let best = null;
  for (let mask = 0; mask < 8; mask++) {
    const grid = new Grid(17 + 4 * version);
    drawFunctionPatterns(grid, version);
    drawData(grid, words);
    applyMask(grid, mask);
    drawFormat(grid, mask);
    const score = penalty(grid);
    if (best === null || score < best.score) best = { grid, score };
  }
  return best.grid;
}

/** Draws `text` as a QR code on `canvas`, `scale` pixels a module, with the four-module quiet zone. */
export function drawQr(canvas, text, scale = 6) {
  const grid = encodeQr(text);
  const quiet = 4;
  canvas.width = canvas.height = (grid.size + 2 * quiet) * scale;
  const context = canvas.getContext('2d');
  context.fillStyle = '#fff';
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.fillStyle = '#000';
  for (let y = 0; y < grid.size; y++) {
    for (let x = 0; x < grid.size; x++) {
      if (grid.get(x, y)) context.fillRect((x + quiet) * scale, (y + quiet) * scale, scale, scale);
    }
  }
}
