// File operations driven by argv, for testing preopened directories:
//   fileops read PATH        print the file
//   fileops write PATH TEXT  create/overwrite PATH with TEXT
//   fileops list PATH        list a directory
//   fileops reread PATH N    read the whole file N times, 4 MiB at a time
//   fileops count PATH       count a directory's entries
// Exits 0 on success; on failure prints "error: <reason>" and exits 2.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("error: %s: %s\n", what, strerror(errno));
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 3) return 64;
    const char *op = argv[1], *path = argv[2];
    if (strcmp(op, "read") == 0) {
        FILE *f = fopen(path, "r");
        if (!f) return fail(path);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
        fclose(f);
        return 0;
    }
    if (strcmp(op, "write") == 0 && argc == 4) {
        FILE *f = fopen(path, "w");
        if (!f) return fail(path);
        fputs(argv[3], f);
        if (fclose(f) != 0) return fail(path);
        return 0;
    }
    if (strcmp(op, "list") == 0) {
        DIR *d = opendir(path);
        if (!d) return fail(path);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) printf("%s\n", e->d_name);
        closedir(d);
        return 0;
    }
    if (strcmp(op, "count") == 0) {
        DIR *d = opendir(path);
        if (!d) return fail(path);
        long n = 0;
        while (readdir(d) != NULL) n++;
        closedir(d);
        printf("%ld\n", n);
        return 0;
    }
    if (strcmp(op, "reread") == 0 && argc == 4) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) return fail(path);
        size_t size = 4 << 20;
        char *buf = malloc(size);
        if (!buf) return fail("malloc");
        long total = 0;
        for (int i = atoi(argv[3]); i > 0; i--) {
            if (lseek(fd, 0, SEEK_SET) != 0) return fail("lseek");
            ssize_t n;
            while ((n = read(fd, buf, size)) > 0) total += n;
            if (n < 0) return fail("read");
        }
        printf("%ld\n", total);
        return 0;
    }
    return 64;
}
