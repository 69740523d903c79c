// Sleeps for argv[1] milliseconds (blocked in poll_oneoff, using no CPU),
// then prints "slept".
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 100;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    printf("slept\n");
    return 0;
}
