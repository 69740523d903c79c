// A reactor whose init builds a heap of malloc'd structures: a linked list
// of named nodes. Running walks it and prints from it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    struct node *next;
    unsigned value;
    char name[24];
};
static struct node *head;

__attribute__((export_name("wizer.initialize"))) void init(void) {
    for (unsigned i = 0; i < 20000; i++) {
        struct node *n = malloc(sizeof *n);
        n->value = i * 2654435761u;
        snprintf(n->name, sizeof n->name, "node-%u", i);
        n->next = head;
        head = n;
    }
}

__attribute__((export_name("sum"))) unsigned sum(void) {
    unsigned s = 0;
    for (struct node *n = head; n; n = n->next) s += n->value + (unsigned)strlen(n->name);
    return s;
}

__attribute__((export_name("show"))) void show(void) {
    // Allocates at run time too, on top of the snapshotted heap.
    char *buf = malloc(64);
    snprintf(buf, 64, "head=%s", head->name);
    printf("%s sum=%u\n", buf, sum());
    free(buf);
}
