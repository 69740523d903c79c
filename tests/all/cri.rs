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

#[test]
fn cri_pod_runs_wasm_containers_in_one_shim() {
    if !can_run("cri_pod_runs_wasm_containers_in_one_shim") {
        return;
    }
    let c = containerd();
    // The pod's sandbox image: never run by the wasmlet shim, but CRI
    // insists on having it.
    c.import(NS, &c_guest("hello"), PAUSE_IMAGE);
    let image = "wasmlet.test/hello:1";
    c.import(NS, &c_guest("hello"), image);
    let logs = crate::helpers::tempdir();
    let log_dir = logs.path().to_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cri = client(&c).await;
        // CRI learns of imported images from containerd's events: wait
        // until it sees both.
        let mut images = ImageServiceClient::new(cri_channel(&c).await);
        for name in [PAUSE_IMAGE, image] {
            let start = Instant::now();
            loop {
                let found = images
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: name.into(),
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
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config(cname, image, code, memory)),
                    sandbox_config: Some(config.clone()),
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
            ids.push((cname, id, code));
        }
        // The pod's containers share one shim process.
        let all: Vec<&str> = std::iter::once(pod.as_str())
            .chain(ids.iter().map(|(_, id, _)| id.as_str()))
            .collect();
        assert_eq!(shims_for(&c, &all).len(), 1, "shims of pod {pod}");
        for (cname, id, code) in &ids {
            let start = Instant::now();
            let status = loop {
                let status = cri
                    .container_status(ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    .unwrap();
                if status.state == ContainerState::ContainerExited as i32 {
                    break status;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{cname} never exited: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
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
