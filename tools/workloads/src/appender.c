/* appender <file> [--interval-ms 50] [--lifetime-s 0]
 *
 * Appends "line <n>\n" to <file> (opened O_WRONLY|O_APPEND|O_CREAT) every interval and
 * keeps a second, read-only fd open on /etc/hostname (or /etc/passwd) positioned at byte
 * 1, so a dump has two regular-file fds with distinct flags and offsets to carry over.
 *
 * Lines:
 *   ready pid=<pid> append_fd=<fd> ro_fd=<fd> ro_pos=1 ro_path=<path> file=<file>
 *   appended counter=<n> offset=<bytes after the write>
 * The file itself holds line 1..n with no gap or repeat while the process is intact. */
#include "common.h"

int main(int argc, char **argv) {
  wl_init(argc, argv);
  const char *file = pos_arg(0, NULL);
  if (!file) die("usage: appender <file> [--interval-ms N]");
  long interval = opt_long("--interval-ms", 50);
  int fd = open(file, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) die("open %s", file);
  const char *ro_path = "/etc/hostname";
  int ro = open(ro_path, O_RDONLY);
  if (ro < 0) {
    ro_path = "/etc/passwd";
    ro = open(ro_path, O_RDONLY);
  }
  if (ro < 0) die("open %s", ro_path);
  char c;
  if (read(ro, &c, 1) != 1) die("read %s", ro_path);
  say("ready pid=%d append_fd=%d ro_fd=%d ro_pos=1 ro_path=%s file=%s", getpid(), fd, ro,
      ro_path, file);
  for (unsigned long counter = 1;; counter++) {
    char line[64];
    int n = snprintf(line, sizeof line, "line %lu\n", counter);
    if (write(fd, line, (size_t)n) != n) die("write %s", file);
    off_t off = lseek(fd, 0, SEEK_CUR);
    say("appended counter=%lu offset=%ld", counter, (long)off);
    check_lifetime(counter);
    if (interval > 0) sleep_ms(interval);
  }
}
