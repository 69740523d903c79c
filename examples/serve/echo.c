// A WAGI function on a prefix route (/echo/...): answers with what it got:
// the path under the route, the query, a request header, and the body,
// with a status and a header of its own.
#include <stdio.h>
#include <stdlib.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(int argc, char **argv) {
    printf("Content-Type: text/plain\n");
    printf("X-Echo-Path: %s\n", env("PATH_INFO"));
    printf("Status: 200 OK\n\n");
    printf("method: %s\npath: %s\nquery: %s\n", env("REQUEST_METHOD"),
           env("PATH_INFO"), env("QUERY_STRING"));
    for (int i = 1; i < argc; i++) printf("arg: %s\n", argv[i]);
    printf("user-agent: %s\n", env("HTTP_USER_AGENT"));
    printf("request-id: %s\n", env("X_REQUEST_ID"));
    printf("body (%s bytes): ", env("CONTENT_LENGTH"));
    int c;
    while ((c = getchar()) != EOF) putchar(c);
    printf("\n");
    fprintf(stderr, "echoed %s\n", env("PATH_INFO"));
    return 0;
}
