// A command whose init (`wizer.initialize`) sets a value its main prints:
// run plainly, init never runs ("initialized=0"); started from a snapshot,
// init ran once before it ("initialized=1", with init's count of runs).
#include <stdio.h>

static int initialized;
static int init_runs;

__attribute__((export_name("wizer.initialize"))) void init(void) {
    initialized = 1;
    init_runs++;
}

int main(void) {
    printf("initialized=%d runs=%d\n", initialized, init_runs);
    return 0;
}
