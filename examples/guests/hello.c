// The bundled example function: greets $NAME, echoes its arguments, counts
// the words on stdin, and reports how much memory it is allowed.
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *name = getenv("NAME");
    printf("Hello, %s, from a wasmlet function!\n", name ? name : "stranger");
    for (int i = 1; i < argc; i++) printf("  argument %d: %s\n", i, argv[i]);
    long words = 0;
    int c, in_word = 0;
    while ((c = getchar()) != EOF) {
        if (isspace(c)) in_word = 0;
        else if (!in_word) { in_word = 1; words++; }
    }
    printf("  stdin had %ld word(s)\n", words);
    return 0;
}
