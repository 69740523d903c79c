//! The Kubernetes path without a kubelet: containerd's CRI plugin (on in
//! the test daemon's config, see `containerd`) driven over its gRPC socket
//! with the `k8s-cri` client: a host-network pod with the wasmlet runtime
//! handler, its containers' logs and exit codes, one shim per pod, and
//! clean removal.

use crate::containerd::{CRI_HANDLER, Containerd, PAUSE_IMAGE, can_run, containerd, shim_pids};
use crate::helpers::c_guest;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

const NS: &str = "k8s.io";

async fn client(c: &Containerd) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(cri_channel(c).await)
}

async fn cri_channel(c: &Containerd) -> Channel {
    let path = c.socket.clone();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connecting to containerd's CRI")
}

fn pod_config(name: &str, log_dir: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(
    name: &str,
    image: &str,
    exit_code: u32,
    memory: Option<i64>,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        args: vec![format!("from-{name}")],
        envs: vec![KeyValue {
            key: "EXIT_CODE".into(),
            value: exit_code.to_string(),
        }],
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            resources: memory.map(|m| LinuxContainerResources {
                memory_limit_in_bytes: m,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The live wasmlet shims of this daemon serving any of `ids`.
fn shims_for(c: &Containerd, ids: &[&str]) -> Vec<u32> {
    shim_pids(&c.socket.to_string_lossy())
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.windows(2)
                .any(|w| w[0] == "-id" && ids.contains(&w[1].as_str()))
        })
        .collect()
}

/// Waits until CRI sees the imported `images` (it learns of them from
/// containerd's events).
async fn wait_for_images(c: &Containerd, names: &[&str]) {
    let mut images = ImageServiceClient::new(cri_channel(c).await);
    for name in names {
        let start = Instant::now();
        loop {
            let found = images
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: name.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .map(|r| r.into_inner().image.is_some())
                .unwrap_or(false);
            if found {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "CRI never saw {name}:\n{}",
                c.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls until the container has exited; its status.
async fn wait_exited(cri: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    let start = Instant::now();
    loop {
        let status = cri
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id} never exited: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a pod test needs: the pause image imported (native, so runc pods
/// can use it too; the wasmlet shim never runs a pod's sandbox container),
/// a directory for the containers' logs (and its path), a tokio runtime
/// for the CRI client.
fn pod_setup(c: &Containerd) -> (tempfile::TempDir, String, tokio::runtime::Runtime) {
    c.import_native(NS, "pause", PAUSE_IMAGE);
    let logs = crate::helpers::tempdir();
    let log_dir = logs.path().to_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    (logs, log_dir, rt)
}

/// CreateContainer then StartContainer in `pod`; the container's id.
async fn create_and_start(
    cri: &mut RuntimeServiceClient<Channel>,
    c: &Containerd,
    pod: &str,
    config: ContainerConfig,
    sandbox_config: &PodSandboxConfig,
) -> String {
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    id
}

#[test]
fn cri_pod_runs_wasm_containers_in_one_shim() {
    if !can_run("cri_pod_runs_wasm_containers_in_one_shim") {
        return;
    }
    let c = containerd();
    let (logs, log_dir, rt) = pod_setup(&c);
    let image = "wasmlet.test/hello:1";
    c.import(NS, &c_guest("hello"), image);
    let snap_image = "wasmlet.test/snap-init-plain:1";
    c.import(NS, &c_guest("snap_init"), snap_image);
    rt.block_on(async {
        let mut cri = client(&c).await;
        wait_for_images(&c, &[PAUSE_IMAGE, image, snap_image]).await;
        let name = format!("pod{}", std::process::id());
        let config = pod_config(&name, &log_dir);
        let pod = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: CRI_HANDLER.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()))
            .into_inner()
            .pod_sandbox_id;
        // One container in the shim (no limits), one in a sandbox worker
        // (a memory limit), in the same pod.
        let mut ids = Vec::new();
        for (cname, code, memory) in [("plain", 0, None), ("limited", 3, Some(128i64 << 20))] {
            let config_c = container_config(cname, image, code, memory);
            let id = create_and_start(&mut cri, &c, &pod, config_c, &config).await;
            ids.push((cname, id, code));
        }
        // A container annotation that CRI passes through to the spec (the
        // runtime's `container_annotations`): started from a snapshot.
        let mut snap_config = container_config("snap", snap_image, 0, None);
        snap_config
            .annotations
            .insert("wasmlet.io/snapshot".into(), "true".into());
        let snap = create_and_start(&mut cri, &c, &pod, snap_config, &config).await;
        // The pod's containers share one shim process.
        let all: Vec<&str> = std::iter::once(pod.as_str())
            .chain(ids.iter().map(|(_, id, _)| id.as_str()))
            .chain(std::iter::once(snap.as_str()))
            .collect();
        // (A container's `start` runs a short-lived process that finds the
        // pod's shim already serving and exits, possibly just after
        // containerd got the address: give it a moment.)
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut shims = shims_for(&c, &all);
        while shims.len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            shims = shims_for(&c, &all);
        }
        let cmdlines: Vec<String> = shims
            .iter()
            .map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&raw).replace('\0', " ")
                )
            })
            .collect();
        assert_eq!(shims.len(), 1, "shims of pod {pod}: {cmdlines:#?}");
        for (cname, id, code) in &ids {
            let status = wait_exited(&mut cri, id).await;
            assert_eq!(status.exit_code, *code as i32, "{cname}: {status:?}");
            // The CRI-format log has the guest's output, both streams.
            let log = std::fs::read_to_string(logs.path().join(format!("{cname}.log"))).unwrap();
            assert!(log.contains(" stdout F hello from wasm"), "{cname}: {log}");
            assert!(
                log.contains(&format!(" stdout F arg[1]=from-{cname}")),
                "{cname}: {log}"
            );
            assert!(
                log.contains(" stderr F this goes to stderr"),
                "{cname}: {log}"
            );
        }
        let status = wait_exited(&mut cri, &snap).await;
        assert_eq!(status.exit_code, 0, "snap: {status:?}");
        let log = std::fs::read_to_string(logs.path().join("snap.log")).unwrap();
        assert!(
            log.contains(" stdout F initialized=1 runs=1"),
            "snap: {log}"
        );
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.log()));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.log()));
        let left = cri
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(left.iter().all(|ct| ct.pod_sandbox_id != pod), "{left:?}");
        for id in &all {
            c.assert_cleaned_up(NS, id);
        }
    });
}

/// The CRI figure of `scripts/bench-shim` (not a test: it asserts only that
/// everything ran): a host-network pod of 10 hello containers with the
/// wasmlet handler and with runc (a static native hello), each created and
/// started one after the other as a kubelet does, timed from the first
/// `CreateContainer` until all 10 have exited; also the pod's
/// `RunPodSandbox`, and each container's own created → finished time from
/// its status (CRI's `started_at` is taken after the start request returns,
/// which an in-shim guest can outlive: started → finished can be negative). Prints one `CRI-BENCH` line per runtime (medians over
/// `WASMLET_CRI_BENCH_ROUNDS` pods, default 5).
#[test]
#[ignore = "a benchmark, run by scripts/bench-shim"]
fn cri_bench_pod_of_ten_containers() {
    if !can_run("cri_bench_pod_of_ten_containers") {
        return;
    }
    let rounds: usize = std::env::var("WASMLET_CRI_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let c = containerd();
    let (_logs, log_dir, rt) = pod_setup(&c);
    let wasm = "wasmlet.test/hello:1";
    c.import(NS, &c_guest("hello"), wasm);
    let native = "wasmlet.test/hello-native:1";
    c.import_native(NS, "hello", native);
    rt.block_on(async {
        let mut cri = client(&c).await;
        wait_for_images(&c, &[PAUSE_IMAGE, wasm, native]).await;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        // One warm-up pod each (compiled-module cache, page cache), then
        // the runtimes alternate.
        let mut figures: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); 2];
        for round in 0..=rounds {
            for (i, (handler, image)) in [(CRI_HANDLER, wasm), ("runc", native)]
                .into_iter()
                .enumerate()
            {
                let name = format!("bench{}-{handler}-{round}", std::process::id());
                let config = pod_config(&name, &log_dir);
                let t = Instant::now();
                let pod = cri
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: handler.into(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", c.log()))
                    .into_inner()
                    .pod_sandbox_id;
                let pod_ms = t.elapsed().as_secs_f64() * 1e3;
                let t = Instant::now();
                let mut ids = Vec::new();
                for k in 0..10 {
                    let cname = format!("{handler}-{round}-{k}");
                    let ct = container_config(&cname, image, 0, None);
                    let id = create_and_start(&mut cri, &c, &pod, ct, &config).await;
                    ids.push(id);
                }
                let mut own = Vec::new();
                for id in &ids {
                    let status = wait_exited(&mut cri, id).await;
                    assert_eq!(status.exit_code, 0, "{handler}: {status:?}");
                    own.push((status.finished_at - status.created_at) as f64 / 1e6);
                }
                let ten_ms = t.elapsed().as_secs_f64() * 1e3;
                cri.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
                .unwrap();
                cri.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
                .unwrap();
                if round > 0 {
                    figures[i].0.push(pod_ms);
                    figures[i].1.push(ten_ms);
                    figures[i].2.push(median(own));
                }
            }
        }
        for (i, handler) in [CRI_HANDLER, "runc"].into_iter().enumerate() {
            let (pod, ten, own) = figures[i].clone();
            println!(
                "CRI-BENCH runtime={handler} rounds={rounds} run_pod_sandbox_ms={:.1} ten_containers_create_to_all_exited_ms={:.1} container_created_to_finished_ms={:.2}",
                median(pod),
                median(ten),
                median(own)
            );
        }
    });
}
