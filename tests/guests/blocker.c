// Blocks in WASI, in the way argv[1] names:
//   sleep-loop  sleeps 100 s at a time, forever (poll_oneoff);
//   read-stdin  reads stdin to its end, then prints how many bytes it read;
//   write-out   writes 64 KiB at a time to stdout, forever.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "sleep-loop")) {
        for (;;) sleep(100);
    }
    if (!strcmp(mode, "read-stdin")) {
        static char buf[4096];
        long total = 0;
        ssize_t n;
        while ((n = read(0, buf, sizeof buf)) > 0) total += n;
        printf("read %ld bytes\n", total);
        return 0;
    }
    if (!strcmp(mode, "write-out")) {
        static char buf[64 << 10];
        memset(buf, 'x', sizeof buf);
        for (;;) {
            if (write(1, buf, sizeof buf) < 0) return 3;
        }
    }
    fprintf(stderr, "usage: blocker sleep-loop|read-stdin|write-out\n");
    return 2;
}
