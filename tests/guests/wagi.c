// A WAGI guest for the serve tests; PATH_INFO picks the behaviour:
//   /hello        200 "hello"
//   /echo         body and selected request metadata back, X-Got-Header set
//   /status       Status: 418 and a custom header
//   /trap         unreachable
//   /spin         loops forever (CPU time or timeout)
//   /sleep?MS     sleeps MS milliseconds, then answers
//   /grow         allocates until memory runs out
//   /exit3        exits 3 without writing anything
//   /noheaders    writes a body with no header block, exits 0
//   /stderr?N     writes N lines to stderr, then answers
//   /big?N        answers with N bytes
//   /headers?N    answers with N header lines
//   /cat?PATH     answers with the file at PATH (404 if it cannot be opened)
//   /write?PATH   tries to create PATH: "written" or "refused"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    const char *path = env("PATH_INFO");
    const char *query = env("QUERY_STRING");
    if (!strcmp(path, "/trap")) __builtin_trap();
    if (!strcmp(path, "/spin")) {
        volatile unsigned long n = 0;
        for (;;) n++;
    }
    if (!strcmp(path, "/grow")) {
        static char *volatile last;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) __builtin_trap();
            memset(p, 1, 1 << 20);
            last = p;
        }
    }
    if (!strcmp(path, "/exit3")) return 3;
    if (!strcmp(path, "/noheaders")) {
        printf("just a body\n");
        return 0;
    }
    if (!strcmp(path, "/sleep")) {
        long ms = atol(query);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        printf("Content-Type: text/plain\n\nslept %ld\n", ms);
        return 0;
    }
    if (!strcmp(path, "/stderr")) {
        long n = atol(query);
        for (long i = 0; i < n; i++) fprintf(stderr, "line %ld of guest stderr\n", i);
        printf("Content-Type: text/plain\n\nwrote %ld lines\n", n);
        return 0;
    }
    if (!strcmp(path, "/big")) {
        long n = atol(query);
        printf("Content-Type: application/octet-stream\n\n");
        for (long i = 0; i < n; i++) putchar('x');
        return 0;
    }
    if (!strcmp(path, "/headers")) {
        long n = atol(query);
        for (long i = 0; i < n; i++) printf("X-H%ld: v\n", i);
        printf("\n%ld headers\n", n);
        return 0;
    }
    if (!strcmp(path, "/cat")) {
        FILE *f = fopen(query, "r");
        if (!f) {
            printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno %s\n", query);
            return 0;
        }
        printf("Content-Type: text/plain\n\n");
        int c;
        while ((c = fgetc(f)) != EOF) putchar(c);
        return 0;
    }
    if (!strcmp(path, "/write")) {
        FILE *f = fopen(query, "w");
        printf("Content-Type: text/plain\n\n%s\n", f ? "written" : "refused");
        return 0;
    }
    if (!strcmp(path, "/status")) {
        printf("Status: 418 I'm a teapot\nX-Custom: yes\nContent-Type: text/plain\n\nteapot\n");
        return 0;
    }
    if (!strcmp(path, "/echo")) {
        printf("Content-Type: application/octet-stream\n");
        printf("X-Got-Header: %s\n", env("HTTP_X_TEST"));
        printf("X-Method: %s\n", env("REQUEST_METHOD"));
        printf("X-Query: %s\n", query);
        printf("X-Script: %s\n", env("SCRIPT_NAME"));
        printf("X-Greeting: %s\n\n", env("GREETING"));
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
        return 0;
    }
    printf("Content-Type: text/plain\n\nhello from %s\n", path[0] ? path : "/");
    return 0;
}
