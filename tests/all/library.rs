//! The embedding API of `wasmlet-runtime`.

use crate::helpers::*;
use wasmlet_runtime::{
    Entry, Error, Input, Invocation, LimitExceeded, Limits, LoadOptions, Output, Runtime,
    RuntimeConfig, Status, Val,
};

#[test]
fn stdio_is_captured_or_given() {
    let rt = runtime();
    let hello = rt
        .load_file(c_guest("hello"), &LoadOptions::default())
        .unwrap();
    let o = hello
        .invoke(Invocation {
            args: vec!["hello".into(), "a".into()],
            env: vec![("GREETING".into(), "hey".into())],
            stdin: Input::Bytes(vec![7u8; 1234].into()),
            ..Default::default()
        })
        .unwrap();
    assert!(o.success());
    let out = stdout_of(&o);
    assert!(out.contains("arg[1]=a\nGREETING=hey\n"), "{out}");
    assert!(out.contains("stdin bytes=1234"));
    assert_eq!(o.stderr.as_deref(), Some(&b"this goes to stderr\n"[..]));

    // Streams to files, or discarded.
    let dir = tempdir();
    let path = dir.path().join("out.txt");
    let o = hello
        .invoke(Invocation {
            stdout: Output::File(std::fs::File::create(&path).unwrap()),
            stderr: Output::Null,
            ..Default::default()
        })
        .unwrap();
    assert!(o.stdout.is_none() && o.stderr.is_none());
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("hello from wasm")
    );
}

#[test]
fn captured_output_is_capped() {
    let rt = runtime();
    let f = load_wat(&rt, HELLO_WAT);
    let o = f
        .invoke(Invocation {
            limits: Some(Limits {
                max_captured_output: 3,
                ..Limits::default()
            }),
            ..Default::default()
        })
        .unwrap();
    assert!(o.stdout.unwrap().len() <= 3);
}

#[test]
fn reactor_exports_run_after_initialize() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        assert!(!f.is_command());
        // A snapshot has already run `_initialize`, so no longer exports it.
        assert_eq!(
            f.module().unwrap().get_export("_initialize").is_some(),
            mode == "plain"
        );
        let o = call(&f, "initialized", vec![]);
        assert!(matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(1)])));
        let o = call(&f, "add", vec![Val::I32(20), Val::I32(22)]);
        assert!(matches!(&o.status, Status::Returned(v) if matches!(v[..], [Val::I32(42)])));
        // Wrong argument types are refused before anything runs.
        let e = f
            .invoke(Invocation {
                entry: Entry::Export {
                    name: "add".into(),
                    params: vec![Val::I64(1), Val::I32(2)],
                },
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, Error::Entry(_)), "{e}");
    }
}

#[test]
fn outcome_into_result_is_typed() {
    for (mode, rt) in runtimes() {
        eprintln!("mode: {mode}");
        let f = load_wat(&rt, TOOLS_WAT);
        assert!(
            matches!(call(&f, "boom", vec![]).into_result(), Err(Error::Trap(m)) if m.contains("unreachable"))
        );
        assert!(matches!(
            call(&f, "exit", vec![Val::I32(9)]).into_result(),
            Err(Error::Exit(9))
        ));
        let o = f
            .invoke(Invocation {
                entry: Entry::Export {
                    name: "grow".into(),
                    params: vec![],
                },
                limits: Some(Limits {
                    max_memory: 1 << 20,
                    ..Limits::default()
                }),
                ..Default::default()
            })
            .unwrap();
        assert!(matches!(
            o.into_result(),
            Err(Error::LimitExceeded(LimitExceeded::Memory(_)))
        ));
        assert!(
            call(&f, "add", vec![Val::I32(1), Val::I32(2)])
                .into_result()
                .is_ok()
        );
    }
}

#[test]
fn load_errors_are_typed() {
    let rt = runtime();
    let opts = LoadOptions::default();
    assert!(matches!(
        rt.load_bytes(b"junk", &opts),
        Err(Error::NotWasm(_))
    ));
    assert!(matches!(
        rt.load_bytes(b"(module (func (i32.add)))", &opts),
        Err(Error::Compile(_))
    ));
    assert!(matches!(
        rt.load_bytes(br#"(module (import "x" "y" (func)))"#, &opts),
        Err(Error::UnknownImports(v)) if v == ["x::y"]
    ));
    // Artifacts from this runtime load; from a differently configured one, not.
    let artifact = rt.precompile(HELLO_WAT.as_bytes()).unwrap();
    assert!(matches!(
        rt.load_bytes(&artifact, &opts),
        Err(Error::Artifact(wasmlet_runtime::ArtifactError::NotAllowed))
    ));
    let opts = LoadOptions {
        allow_precompiled: true,
        ..LoadOptions::default()
    };
    let f = rt.load_bytes(&artifact, &opts).unwrap();
    assert_eq!(
        stdout_of(&f.invoke(Invocation::default()).unwrap()),
        "hello\n"
    );
    let fuel_rt = runtime_with(|c| c.fuel_metering = true);
    assert!(matches!(
        fuel_rt.load_bytes(&artifact, &opts),
        Err(Error::Artifact(
            wasmlet_runtime::ArtifactError::EngineMismatch
        ))
    ));
}

#[test]
fn runtime_from_toml_config() {
    let config: RuntimeConfig = toml::from_str(
        r#"
        epoch_tick = "2ms"
        [pool]
        instances = 4
        [cache]
        enabled = false
        [limits]
        max_memory = 1048576
        cpu_time = "20ms"
        "#,
    )
    .unwrap();
    let rt = Runtime::new(config).unwrap();
    let f = load_wat(&rt, TOOLS_WAT);
    assert_eq!(f.limits().max_memory, 1 << 20);
    let o = call(&f, "spin", vec![]);
    assert!(matches!(
        o.status,
        Status::LimitExceeded(LimitExceeded::CpuTime(_))
    ));

    let bad = RuntimeConfig {
        limits: Limits {
            max_memory: 8 << 30,
            ..Limits::default()
        },
        ..RuntimeConfig::default()
    };
    assert!(matches!(Runtime::new(bad), Err(Error::Config(_))));
}
