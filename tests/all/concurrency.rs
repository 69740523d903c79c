//! Many invocations at once: each gets a fresh instance, and one that
//! traps or is stopped for a limit never disturbs the others.

use crate::helpers::*;
use std::time::Duration;
use wasmlet_runtime::{Entry, Invocation, LimitExceeded, Limits, LoadOptions, Status, Val};

#[test]
fn mixed_invocations_from_many_threads() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let tools = load_wat(&rt, TOOLS_WAT);
        let hello = rt
            .load_file(c_guest("hello"), &LoadOptions::default())
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (tools, hello) = (&tools, &hello);
                s.spawn(move || {
                    for i in 0..25 {
                        match (t + i) % 5 {
                            0 => {
                                let o = hello
                                    .invoke(Invocation {
                                        args: vec!["hello".into(), format!("{t}-{i}")],
                                        ..Default::default()
                                    })
                                    .unwrap();
                                assert!(matches!(o.status, Status::Exited(0)));
                                assert!(stdout_of(&o).contains(&format!("arg[1]={t}-{i}\n")));
                            }
                            1 => {
                                let o = call(tools, "boom", vec![]);
                                assert!(matches!(o.status, Status::Trapped(_)));
                            }
                            2 => {
                                let o = tools
                                    .invoke(Invocation {
                                        entry: Entry::Export { name: "spin".into(), params: vec![] },
                                        limits: Some(Limits {
                                            cpu_time: Some(Duration::from_millis(5)),
                                            ..Limits::default()
                                        }),
                                        ..Default::default()
                                    })
                                    .unwrap();
                                assert!(matches!(o.status, Status::LimitExceeded(LimitExceeded::CpuTime(_))));
                            }
                            3 => {
                                let o = tools
                                    .invoke(Invocation {
                                        entry: Entry::Export { name: "grow".into(), params: vec![] },
                                        limits: Some(Limits { max_memory: 2 << 20, ..Limits::default() }),
                                        ..Default::default()
                                    })
                                    .unwrap();
                                assert!(matches!(o.status, Status::LimitExceeded(LimitExceeded::Memory(_))));
                            }
                            _ => {
                                // State never leaks between invocations.
                                let o = call(tools, "bump", vec![]);
                                assert!(matches!(&o.status, Status::Returned(v) if matches!(v[0], Val::I32(2))), "{:?}", o.status);
                            }
                        }
                    }
                });
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_from_tokio_tasks() {
    let rt = runtime_with(|c| c.pool.instances = 4);
    let f = load_wat(&rt, HELLO_WAT);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.invoke_async(Invocation::default()).await.unwrap() })
        })
        .collect();
    // More tasks than pool slots: async invocations wait for a free slot.
    for t in tasks {
        let o = t.await.unwrap();
        assert!(matches!(o.status, Status::Exited(0)), "{:?}", o.status);
        assert_eq!(stdout_of(&o), "hello\n");
    }
}

#[test]
fn a_full_pool_is_a_typed_error_not_a_hang() {
    let rt = runtime_with(|c| c.pool.instances = 1);
    let f = load_wat(&rt, TOOLS_WAT);
    std::thread::scope(|s| {
        let spinner = s.spawn(|| {
            f.invoke(Invocation {
                entry: Entry::Export {
                    name: "spin".into(),
                    params: vec![],
                },
                limits: Some(Limits {
                    timeout: Some(Duration::from_millis(1500)),
                    ..Limits::default()
                }),
                ..Default::default()
            })
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let o = call(&f, "add", vec![Val::I32(1), Val::I32(1)]);
        assert!(
            matches!(o.status, Status::LimitExceeded(LimitExceeded::PoolFull(1))),
            "{:?}",
            o.status
        );
        let o = spinner.join().unwrap();
        assert!(matches!(
            o.status,
            Status::LimitExceeded(LimitExceeded::Timeout(_))
        ));
    });
    // The slot is free again.
    let o = call(&f, "add", vec![Val::I32(1), Val::I32(1)]);
    assert!(o.success());
}
