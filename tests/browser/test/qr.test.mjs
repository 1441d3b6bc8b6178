// The demo page's own QR encoder (src/demo/assets/qr.js), read back with jsQR at every version it makes:
// the byte lengths that just fit each of versions 1 to 10 at level M, and a text beyond them.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import jsQR from 'jsqr';

import { encodeQr } from '../../../src/demo/assets/qr.js';

/** RGBA pixels of the grid, `scale` pixels a module, with the four-module quiet zone. */
function render(grid, scale = 4) {
  const side = (grid.size + 8) * scale;
  const pixels = new Uint8ClampedArray(side * side * 4).fill(255);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const mx = Math.floor(x / scale) - 4;
      const my = Math.floor(y / scale) - 4;
      if (mx >= 0 && my >= 0 && mx < grid.size && my < grid.size && grid.get(mx, my)) {
        pixels.fill(0, (y * side + x) * 4, (y * side + x) * 4 + 3);
      }
    }
  }
  return { pixels, side };
}

// Bytes that fill versions 1..10 at level M exactly (the 10th counts its length in 16 bits).
const CAPACITY = [14, 26, 42, 62, 84, 106, 122, 152, 180, 213];

test('every version of the demo QR encoder reads back', () => {
  CAPACITY.forEach((length, i) => {
    const text = `https://sealpost.example/demo/#t=${'x'.repeat(length)}`.slice(0, length);
    const grid = encodeQr(text);
    assert.equal(grid.size, 17 + 4 * (i + 1), `${length} bytes take version ${i + 1}`);
    const { pixels, side } = render(grid);
    assert.equal(jsQR(pixels, side, side)?.data, text, `version ${i + 1} does not read back`);
  });
  assert.equal(encodeQr('é').size, 21, 'UTF-8 text is encoded as its bytes');
  assert.throws(() => encodeQr('x'.repeat(214)), /too long/);
});
