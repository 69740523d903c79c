// Allocates and touches 1 MiB blocks until malloc fails, reports how many it
// got, then aborts the way most programs do when out of memory.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Kept in a volatile so the compiler cannot drop the allocations.
static char *volatile last;

int main(void) {
    size_t blocks = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 1, 1 << 20);
        last = p;
        blocks++;
    }
    fprintf(stderr, "allocated %zu MiB before running out\n", blocks);
    abort();
}
