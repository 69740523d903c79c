// A reactor that reads a config file and an environment variable during
// init (snapshotted with --allow-wasi), then forgets init's environment so
// that at run time getenv sees the invocation's.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void __wasilibc_deinitialize_environ(void);

static char config[256];

__attribute__((export_name("wizer.initialize"))) void init(void) {
    FILE *f = fopen("/config/app.conf", "r");
    if (!f) { strcpy(config, "(no config)"); return; }
    size_t n = fread(config, 1, sizeof config - 1, f);
    config[n] = 0;
    fclose(f);
    const char *suffix = getenv("CONFIG_SUFFIX");
    if (suffix) strncat(config, suffix, sizeof config - strlen(config) - 1);
    __wasilibc_deinitialize_environ();
}

__attribute__((export_name("show"))) void show(void) {
    const char *name = getenv("NAME");
    printf("config=%s name=%s\n", config, name ? name : "(unset)");
}

// Whether the config file is reachable now, through this invocation's dirs.
__attribute__((export_name("can_open_config"))) int can_open_config(void) {
    FILE *f = fopen("/config/app.conf", "r");
    if (f) fclose(f);
    return f != NULL;
}
