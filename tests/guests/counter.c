// A wasi:cli/command component importing the custom interface
// `example:counter/counter` (tests/guests/counter/counter.wit). Its one
// function takes and returns scalars, so the canonical ABI is a plain
// core import: no generated bindings are needed.
#include <stdint.h>
#include <stdio.h>

__attribute__((import_module("example:counter/counter"), import_name("add")))
extern int32_t counter_add(int32_t n);

int main(void) {
    uint32_t a = (uint32_t)counter_add(2);
    uint32_t b = (uint32_t)counter_add(3);
    printf("counter: %u %u\n", a, b);
    return 0;
}
