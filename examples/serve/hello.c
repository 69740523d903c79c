// A WAGI function (CGI over WASI preview 1): headers, a blank line, then
// the body, on stdout. `wasmlet serve` runs a fresh instance per request.
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    const char *greeting = getenv("GREETING");   // from the manifest's env
    const char *method = getenv("REQUEST_METHOD");
    printf("Content-Type: text/plain\n\n");
    printf("%s from a wasmlet function! (%s request)\n",
           greeting ? greeting : "Hello", method ? method : "?");
    return 0;
}
