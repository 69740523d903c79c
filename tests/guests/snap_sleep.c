// A reactor whose init never finishes: it sleeps in WASI, 100 s at a time.
#include <unistd.h>

__attribute__((export_name("wizer.initialize"))) void init(void) {
    for (;;) sleep(100);
}
