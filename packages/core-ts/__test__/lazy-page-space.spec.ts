import test from 'ava';
import { DONE, MISSING, PageSpace, REQUESTED } from '../src/lazy/page-space.js';

const P = 4096;
const A = 0x10000000;

function states(s: PageSpace): Array<[number, number, string]> {
  return s.ranges.map((r) => [r.dst, r.src, [...r.state].join('')]);
}

test('claims, finishes and counts what is still to come', (t) => {
  const s = new PageSpace(P);
  const r = s.add(A, A, 8);
  t.is(s.remaining, 8);
  const run = s.claim(r, 2, 4, false)!;
  t.deepEqual([run.first, run.count], [2, 4]);
  t.is(s.claim(r, 2, 4, false), null, 'requested pages are not claimed twice by the background');
  t.is(s.claim(r, 3, 1, true)!.count, 1, 'a fault may overtake a background request');
  t.is(s.finish(r, 2, 4), 4);
  t.is(s.remaining, 4);
  t.is(s.finish(r, 2, 4), 0, 'finishing twice counts once');
  t.is(s.claim(r, 5, 2, true), null, 'installed pages are never claimed again');
  s.release(r, 0, 2); // nothing requested there: no change
  t.deepEqual(states(s), [[A, A, '00222200']]);
});

test('the background starts near the hint, wraps around, and ends', (t) => {
  const s = new PageSpace(P);
  s.add(A, A, 4);
  s.add(A + 100 * P, A + 100 * P, 4);
  const first = s.nextMissing(A + 101 * P, 2)!;
  t.deepEqual([first.range.dst, first.first, first.count], [A + 100 * P, 1, 2]);
  const seen: Array<[number, number, number]> = [];
  for (let run = s.nextMissing(A + 101 * P, 2); run; run = s.nextMissing(A + 101 * P, 2)) {
    seen.push([run.range.dst, run.first, run.count]);
    s.finish(run.range, run.first, run.count);
  }
  s.finish(first.range, first.first, first.count);
  t.is(s.remaining, 0);
  t.is(s.nextMissing(A, 2), null);
  // Every page exactly once, the hinted range's rest before the wrap.
  t.deepEqual(seen, [
    [A + 100 * P, 3, 1],
    [A + 100 * P, 0, 1],
    [A, 0, 2],
    [A, 2, 2],
  ]);
});

test('dropped memory is done: never fetched, counted out', (t) => {
  const s = new PageSpace(P);
  const r = s.add(A, A, 8);
  s.claim(r, 0, 2, false);
  t.is(s.drop(A + P, A + 5 * P), 4);
  t.is(s.remaining, 4);
  t.deepEqual(states(s), [[A, A, '12222000']]);
  t.is(s.find(A + 2 * P)!.state[2], DONE);
});

test('mremap moves what is still to come, remembering where it came from', (t) => {
  const s = new PageSpace(P);
  const r = s.add(A, A, 8);
  s.finish(r, 0, 2);
  s.claim(r, 2, 1, false);
  s.remap(A + 2 * P, A + 1000 * P, 4 * P);
  t.is(s.remaining, 6, 'moving loses nothing');
  const moved = s.find(A + 1000 * P)!;
  t.is(moved.src, A + 2 * P, 'fetched from the old address on the source');
  t.deepEqual([...moved.state], [MISSING, MISSING, MISSING, MISSING], 'the in-flight request is fetched again for the new place');
  t.is(s.find(A + 2 * P)!.state[2], DONE, 'nothing is installed at the old place');
});

test('mremap onto addresses that held other lazy pages replaces them', (t) => {
  const s = new PageSpace(P);
  s.add(A, A, 4);
  s.add(A + 100 * P, A + 100 * P, 8);
  // The kernel unmaps the destination first (an UNMAP event), then moves.
  s.drop(A + 102 * P, A + 106 * P);
  s.remap(A, A + 102 * P, 4 * P);
  const r = s.find(A + 103 * P)!;
  t.is(r.src, A, 'a fault there fetches the moved pages, not the replaced ones');
  t.deepEqual(states(s), [
    [A, A, '2222'],
    [A + 100 * P, A + 100 * P, '00'],
    [A + 102 * P, A, '0000'],
    [A + 106 * P, A + 106 * P, '00'],
  ]);
  t.is(s.remaining, 8);
});

test('a forked child misses what its parent misses; requests in flight are the parent\'s', (t) => {
  const s = new PageSpace(P);
  const r = s.add(A, A, 4);
  s.finish(r, 0, 1);
  s.claim(r, 1, 1, false);
  const child = s.fork();
  t.deepEqual(states(child), [[A, A, '2000']]);
  t.is(child.remaining, 3);
  t.deepEqual(states(s), [[A, A, '2100']]);
  t.is(s.ranges[0]!.state[1], REQUESTED);
});

test('the background finds every page that is missing, whatever was claimed, released, dropped or moved before', (t) => {
  // A seeded random walk of what the engine does, against a plain scan of the states: a
  // MISSING page anywhere means nextMissing finds one (the search bounds it keeps must
  // never hide a page put back by release, or split off by a carve).
  let seed = 12345;
  const rnd = (n: number): number => {
    // xorshift32
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  for (let round = 0; round < 100; round++) {
    const s = new PageSpace(P);
    s.add(A, A, 64);
    s.add(A + 200 * P, A + 200 * P, 64);
    const requested: Array<{ dst: number; first: number; count: number }> = [];
    for (let step = 0; step < 300; step++) {
      const anyMissing = s.ranges.some((r) => r.state.includes(MISSING));
      const hint = A + rnd(300) * P;
      const op = rnd(10);
      if (op < 5) {
        const run = s.nextMissing(hint, 1 + rnd(8));
        t.is(run !== null, anyMissing, `round ${round} step ${step}: a missing page ${anyMissing ? 'is there' : 'is not'}`);
        if (!run) continue;
        t.true([...run.range.state.subarray(run.first, run.first + run.count)].every((x) => x === REQUESTED));
        requested.push({ dst: run.range.dst + run.first * P, first: run.first, count: run.count });
      } else if (op < 7 && requested.length > 0) {
        // A reply that could not be installed: back to MISSING (where it still is REQUESTED).
        const q = requested.splice(rnd(requested.length), 1)[0]!;
        const r = s.find(q.dst);
        if (r) s.release(r, (q.dst - r.dst) / P, Math.min(q.count, r.pages - (q.dst - r.dst) / P));
      } else if (op < 9 && requested.length > 0) {
        const q = requested.splice(rnd(requested.length), 1)[0]!;
        const r = s.find(q.dst);
        if (r) s.finish(r, (q.dst - r.dst) / P, Math.min(q.count, r.pages - (q.dst - r.dst) / P));
      } else {
        const start = A + rnd(280) * P;
        const len = (1 + rnd(16)) * P;
        // mremap's target may be where other lazy pages were (they give way), never its source
        const to = A + rnd(500) * P;
        if (rnd(2) === 0) s.drop(start, start + len);
        else if (Math.abs(to - start) >= len) s.remap(start, to, len);
      }
    }
    // Then the background takes the rest: nothing missing is left behind.
    for (let run = s.nextMissing(A, 8); run; run = s.nextMissing(A, 8)) s.finish(run.range, run.first, run.count);
    t.deepEqual(s.ranges.filter((r) => r.state.includes(MISSING)).map((r) => r.dst), [], `round ${round}: pages left MISSING`);
  }
});

test('many small ranges: found by address, and the background from one hint walks them in order once', (t) => {
  const s = new PageSpace(P);
  // 5,000 ranges of 2 pages with a page between: added out of order, each its own range.
  const n = 5000;
  const at = (i: number): number => A + i * 3 * P;
  for (let i = 0; i < n; i++) s.add(at((i * 7919) % n), at((i * 7919) % n), 2);
  t.is(s.ranges.length, n);
  t.true(s.ranges.every((r, i) => i === 0 || s.ranges[i - 1]!.dst < r.dst), 'kept in address order');
  t.is(s.find(at(1234) + P)?.dst, at(1234));
  t.is(s.find(at(1234) + 2 * P), undefined, 'the page between two ranges is in none');
  // From a hint in range 10: 10..n-1 in order, then 0..9, each once.
  const hint = at(10);
  const seen: number[] = [];
  for (let run = s.nextMissing(hint, 512); run; run = s.nextMissing(hint, 512)) seen.push((run.range.dst - A) / (3 * P));
  t.deepEqual(seen, [...Array.from({ length: n - 10 }, (_, i) => i + 10), ...Array.from({ length: 10 }, (_, i) => i)]);
  // A request given back behind where the search stands is found again, when it wraps.
  const back = s.find(at(20))!;
  s.release(back, 0, 2);
  t.is(s.nextMissing(hint, 512)?.range, back);
  t.is(s.nextMissing(hint, 512), null);
});
