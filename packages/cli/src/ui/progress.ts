/**
 * Progress lines on stderr: rewritten in place on a terminal, throttled to one line a
 * second otherwise (a log file should not fill with them).
 */
export class Progress {
  readonly #tty = process.stderr.isTTY === true;
  #last = 0;
  #shown = false;

  update(text: string): void {
    const now = performance.now();
    if (this.#tty) {
      if (now - this.#last < 50) return;
      process.stderr.write(`\r\x1b[K${text}`);
      this.#shown = true;
    } else {
      if (now - this.#last < 1000) return;
      process.stderr.write(`${text}\n`);
    }
    this.#last = now;
  }

  done(): void {
    if (this.#tty && this.#shown) process.stderr.write('\r\x1b[K');
    this.#shown = false;
  }
}

export function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : /(s|sh|ch|x)$/.test(word) ? 'es' : 's'}`;
}

/** A phase → milliseconds record as log fields (`images=5.1 stub=3.2 …`), rounded to 0.1 ms. */
export function phaseFields(phaseMs: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(phaseMs).map(([k, ms]) => [k, Math.round(ms * 10) / 10]));
}
