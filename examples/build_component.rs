//! Builds a C test guest (`tests/guests/<NAME>.c`) into a component with
//! `tests/guests/components.rs` (the tests' and benchmarks' builder) and
//! prints its path: how `scripts/bench-serve` gets the wasi:http hello.
//! Usage: cargo run --release --example build_component -- NAME http|command DIR

#[allow(dead_code)] // (the tests use the rest of it)
#[path = "../tests/guests/components.rs"]
mod build;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, kind, dir] = args.as_slice() else {
        eprintln!("usage: build_component NAME http|command DIR");
        std::process::exit(2);
    };
    let kind = match kind.as_str() {
        "http" => build::Kind::Http,
        "command" => build::Kind::Command,
        other => {
            eprintln!("build_component: kind must be `http` or `command`, not `{other}`");
            std::process::exit(2);
        }
    };
    let path = build::build_component(name, kind, std::path::Path::new(dir));
    println!("{}", path.display());
}
