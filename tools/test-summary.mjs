#!/usr/bin/env node
// Adds up ava's per-package summaries in a test log into the one closing line CI reads:
// "N passed, N failed". Exits 1 when the log shows no test at all, so a suite that
// silently ran nothing cannot pass for a green one.
import { readFileSync } from 'node:fs';

const text = readFileSync(process.argv[2] ?? 0, 'utf8').replace(/\x1b\[[0-9;]*m/g, '');
const count = (re) => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);

// ava marks each passing test with a "✔ title" line (its "N tests passed" total is left out
// when something failed, so the marks are what we count); failures come in several shapes,
// and each of them counts.
const passed = [...text.matchAll(/^\s*✔ (?!\d+ tests? passed)/gm)].length;
const failed =
  count(/^\s*(?:✘\s*)?(\d+) tests? failed\s*$/gm) +
  count(/^\s*(\d+) uncaught exceptions?\s*$/gm) +
  count(/^\s*(\d+) unhandled rejections?\s*$/gm) +
  count(/^\s*(\d+) tests? remained pending after a timeout\s*$/gm);

console.log(`${passed} passed, ${failed} failed`);
process.exit(passed + failed === 0 ? 1 : 0);
