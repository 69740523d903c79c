// A native (not wasm) pod sandbox program for the CRI tests, like
// Kubernetes' pause: waits for a signal, ends on SIGTERM/SIGINT (SIGKILL
// ends it anyway). Built with `cc -static`, it runs under runc; the
// wasmlet shim never runs a pod's sandbox container at all.
#include <signal.h>
#include <unistd.h>

static void done(int sig) { _exit(128 + sig); }

int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
