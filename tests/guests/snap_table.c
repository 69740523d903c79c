// A reactor whose init builds a lookup table (the kind of work a snapshot
// should save). Built with -mexec-model=reactor.
static unsigned table[65536];
static int init_runs;

__attribute__((export_name("wizer.initialize"))) void init(void) {
    for (unsigned i = 0; i < 65536; i++) table[i] = i * i ^ (i >> 3) ^ 0x5bd1e995u;
    init_runs++;
}

__attribute__((export_name("lookup"))) unsigned lookup(unsigned i) { return table[i & 0xffff]; }

// A few lookups folded together (an export without parameters).
__attribute__((export_name("probe"))) unsigned probe(void) {
    unsigned h = 0;
    for (unsigned i = 0; i < 65536; i += 4099) h = h * 31 + lookup(i);
    return h;
}

__attribute__((export_name("init_runs"))) int get_init_runs(void) { return init_runs; }
