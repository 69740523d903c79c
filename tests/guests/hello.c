// Prints its arguments, one environment variable and the size of its stdin,
// then exits with the code given by EXIT_CODE (default 0).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    printf("hello from wasm\n");
    for (int i = 1; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    const char *greeting = getenv("GREETING");
    printf("GREETING=%s\n", greeting ? greeting : "(unset)");
    const char *home = getenv("HOME");
    printf("HOME=%s\n", home ? home : "(unset)");
    char buf[4096];
    size_t total = 0, n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    printf("stdin bytes=%zu\n", total);
    fprintf(stderr, "this goes to stderr\n");
    const char *code = getenv("EXIT_CODE");
    return code ? atoi(code) : 0;
}
