// An event guest for the trigger tests (schedule and file triggers).
// It reads all of stdin, then, by what stdin starts with:
//   "poison"    writes "poisoned input" to stderr and exits 2
//   "sleep N"   sleeps N milliseconds, then succeeds
//   else        succeeds
// On success it writes, when /out is granted, the file /out/NAME, where NAME
// is WASMLET_FILE_NAME (file trigger) or "sched-" WASMLET_SCHEDULED_TIME
// (schedule trigger), holding "TRIGGER BYTES\n": the trigger's name and the
// number of stdin bytes read.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    static char buf[1 << 20];
    size_t len = 0, n;
    while ((n = fread(buf + len, 1, sizeof buf - 1 - len, stdin)) > 0) len += n;
    buf[len] = 0;
    if (!strncmp(buf, "poison", 6)) {
        fprintf(stderr, "poisoned input\n");
        return 2;
    }
    if (!strncmp(buf, "sleep ", 6)) {
        long ms = atol(buf + 6);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    char path[512];
    if (*env("WASMLET_FILE_NAME"))
        snprintf(path, sizeof path, "/out/%s", env("WASMLET_FILE_NAME"));
    else
        snprintf(path, sizeof path, "/out/sched-%s", env("WASMLET_SCHEDULED_TIME"));
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%s %zu\n", env("WASMLET_TRIGGER"), len);
        fclose(f);
    }
    printf("handled %zu bytes\n", len);
    return 0;
}
