//! deploy/cni-ebpf.yaml read into Kubernetes API types: what the install on
//! a node relies on, and the init container's command run for real, with
//! every path it names mapped to where its volume points on the "host" (a
//! temporary directory standing in for the node's filesystem).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Volume},
};
use serde::Deserialize;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cni-ebpf");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The documents of the manifest, by kind.
fn manifest() -> (ConfigMap, DaemonSet) {
    let text = std::fs::read_to_string(repo().join("deploy/cni-ebpf.yaml")).unwrap();
    let (mut cm, mut ds) = (None, None);
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        match v["kind"].as_str() {
            Some("ConfigMap") => cm = Some(serde_yaml::from_value(v).unwrap()),
            Some("DaemonSet") => ds = Some(serde_yaml::from_value(v).unwrap()),
            k => panic!("unexpected document kind {k:?}"),
        }
    }
    (cm.expect("a ConfigMap"), ds.expect("a DaemonSet"))
}

/// Host path (or ConfigMap name, as `configmap:<name>`) behind each mount path of `c`.
fn mounts(c: &Container, volumes: &[Volume]) -> BTreeMap<String, String> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("mount {} names no volume", m.name));
            let src = if let Some(h) = &v.host_path {
                h.path.clone()
            } else if let Some(cm) = &v.config_map {
                format!("configmap:{}", cm.name)
            } else {
                panic!("volume {} is neither hostPath nor configMap", v.name)
            };
            (m.mount_path.clone(), src)
        })
        .collect()
}

#[test]
fn daemonset_has_what_the_install_relies_on() {
    let (cm, ds) = manifest();
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tol = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tol.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()),
        "a toleration for every taint: {tol:?}"
    );
    let init = pod.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1);
    let install = &init[0];
    let sc = install.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(true), "privileged");

    let volumes = pod.volumes.as_ref().unwrap();
    let m = mounts(install, volumes);
    for (mount, host) in [
        ("/host/opt/cni/bin", "/opt/cni/bin"),
        ("/host/etc/cni/net.d", "/etc/cni/net.d"),
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/var/lib/cni", "/var/lib/cni"),
        ("/run", "/run"),
    ] {
        assert_eq!(m.get(mount).map(String::as_str), Some(host), "{mount}");
    }
    let bpf = install
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == "/sys/fs/bpf")
        .unwrap();
    assert_eq!(bpf.mount_propagation.as_deref(), Some("Bidirectional"));
    let cm_name = cm.metadata.name.as_deref().unwrap();
    assert!(
        m.values().any(|v| *v == format!("configmap:{cm_name}")),
        "the ConfigMap {cm_name} is mounted: {m:?}"
    );
    assert_eq!(
        cm.metadata.namespace, ds.metadata.namespace,
        "same namespace"
    );
    let cmd = install.command.as_ref().expect("command");
    assert_eq!(cmd[..2], ["/cni-ebpf", "install"]);
    // The image's only file.
    let containerfile = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    assert!(containerfile.contains("FROM scratch"));
    assert!(containerfile.contains("COPY cni-ebpf /cni-ebpf"));
}

/// The main container is the node agent: the flags it is given exist, its
/// probes and the metrics annotation point at the address it serves, and it
/// has the mounts a repair needs.
#[test]
fn main_container_runs_the_agent_with_probes_and_metrics() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let (_, ds) = manifest();
    let tmpl = &ds.spec.as_ref().unwrap().template;
    let pod = tmpl.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    let agent = &pod.containers[0];
    let cmd = agent.command.as_ref().expect("command");
    assert_eq!(cmd[..2], ["/cni-ebpf", "agent"]);
    // Every flag is one `cni-ebpf agent` knows.
    let help = Command::new(BIN)
        .args(["agent", "--help"])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "agent has no {flag}: {help}");
    }
    let flag = |name: &str| {
        let i = cmd.iter().position(|a| a == name).unwrap();
        cmd[i + 1].clone()
    };
    let addr: std::net::SocketAddr = flag("--metrics-address").parse().unwrap();
    assert!(
        addr.ip().is_loopback(),
        "metrics on the node's loopback by default"
    );
    let port = i32::from(addr.port());
    let ann = tmpl
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let ports = agent.ports.as_ref().unwrap();
    assert!(ports.iter().any(|p| p.container_port == port));
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let g = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(g.path.as_deref(), Some(path));
        assert_eq!(g.port, IntOrString::Int(port));
        assert_eq!(g.host.as_deref(), Some(addr.ip().to_string().as_str()));
    }
    let res = agent.resources.as_ref().expect("resources");
    let req = res.requests.as_ref().expect("requests");
    assert!(req.contains_key("cpu") && req.contains_key("memory"));
    assert_eq!(
        agent.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let m = mounts(agent, pod.volumes.as_ref().unwrap());
    for (mount, host) in [
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/var/lib/cni", "/var/lib/cni"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/run", "/run"),
    ] {
        assert_eq!(m.get(mount).map(String::as_str), Some(host), "{mount}");
    }
    // The paths it is given are on those mounts.
    assert!(flag("--pin-path").starts_with("/sys/fs/bpf/"));
    assert!(flag("--state-dir").starts_with("/var/lib/cni/"));
    assert!(m.contains_key(
        Path::new(&flag("--conf"))
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
    ));
    let bpf = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == "/sys/fs/bpf")
        .unwrap();
    assert_eq!(bpf.mount_propagation.as_deref(), Some("Bidirectional"));
}

/// Maps a path inside the init container to the stand-in host directory.
fn to_host(p: &str, m: &BTreeMap<String, String>, host: &Path) -> Option<PathBuf> {
    let (mount, src) = m
        .iter()
        .filter(|(mount, _)| p == mount.as_str() || p.starts_with(&format!("{mount}/")))
        .max_by_key(|(mount, _)| mount.len())?;
    let rest = p[mount.len()..].trim_start_matches('/');
    let base = match src.strip_prefix("configmap:") {
        Some(name) => host.join("configmaps").join(name),
        None => host.join(src.trim_start_matches('/')),
    };
    Some(if rest.is_empty() {
        base
    } else {
        base.join(rest)
    })
}

/// The init container's command, run as written (paths mapped to the
/// stand-in host), in a network namespace of its own: the binary, the
/// conflist from the ConfigMap (checked by the plugin's own parser), the
/// data path loaded into a bpffs; then `uninstall` takes it all away again.
#[test]
fn init_container_command_runs() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test loads eBPF programs: run it as root (cargo xtask test)"
    );
    let (cm, ds) = manifest();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let install = &pod.init_containers.as_ref().unwrap()[0];
    let m = mounts(install, pod.volumes.as_ref().unwrap());
    let host = PathBuf::from(format!("/run/cni-ebpf-test/deploy{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&host);
    let cm_dir = host
        .join("configmaps")
        .join(cm.metadata.name.as_deref().unwrap());
    std::fs::create_dir_all(&cm_dir).unwrap();
    for (k, v) in cm.data.as_ref().unwrap() {
        std::fs::write(cm_dir.join(k), v).unwrap();
    }

    let cmd = install.command.as_ref().unwrap();
    let args: Vec<String> = cmd[1..]
        .iter()
        .map(|a| {
            if a.starts_with('/') {
                to_host(a, &m, &host)
                    .unwrap_or_else(|| panic!("{a} is on no volume of the init container"))
                    .display()
                    .to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let run = |args: &[String]| {
        let out = Command::new("unshare")
            .arg("--net")
            .arg(BIN)
            .args(args)
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = run(&args);
    let conflist: Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()["conflist.json"]).unwrap();
    let installed = host.join("etc/cni/net.d/10-cni-ebpf.conflist");
    let checks = || -> Result<(), String> {
        if !ok {
            return Err(format!("install failed: {out}"));
        }
        let bin = std::fs::read(host.join("opt/cni/bin/cni-ebpf")).map_err(|e| e.to_string())?;
        if bin != std::fs::read(BIN).unwrap() {
            return Err("installed binary differs".into());
        }
        let got: Value =
            serde_json::from_slice(&std::fs::read(&installed).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        if got != conflist {
            return Err(format!(
                "installed conflist {got} != ConfigMap's {conflist}"
            ));
        }
        let maps = host.join(format!(
            "sys/fs/bpf/cni-ebpf/v{}/maps",
            cni_ebpf_common::PIN_ABI_VERSION
        ));
        if std::fs::read_dir(&maps).map(|d| d.count()).unwrap_or(0) == 0 {
            return Err(format!("no maps pinned under {}", maps.display()));
        }
        Ok(())
    };
    let res = checks();
    // uninstall with the same directories; it also unmounts the bpffs the
    // install mounted (the stand-in /sys/fs/bpf is not one).
    let p = |s: &str| host.join(s).display().to_string();
    let (un_ok, un_out) = run(&[
        "uninstall".into(),
        "--bin-dir".into(),
        p("opt/cni/bin"),
        "--conf-dir".into(),
        p("etc/cni/net.d"),
        "--pin-path".into(),
        p("sys/fs/bpf/cni-ebpf"),
        "--state-dir".into(),
        p("var/lib/cni/cni-ebpf"),
    ]);
    let left = host.join("sys/fs/bpf/cni-ebpf").exists();
    let _ = std::fs::remove_dir_all(&host);
    res.unwrap();
    assert!(un_ok, "uninstall failed: {un_out}");
    assert!(!left, "pins left after uninstall");
}

/// The KinD cluster config keys bench/kind uses (`kind.x-k8s.io/v1alpha4`);
/// an unknown key is an error, as in kind itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindCluster {
    kind: String,
    api_version: String,
    #[serde(default)]
    networking: KindNetworking,
    nodes: Vec<KindNode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNetworking {
    #[serde(default, rename = "disableDefaultCNI")]
    disable_default_cni: bool,
    pod_subnet: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindNode {
    role: String,
}

fn kind_file(name: &str) -> String {
    std::fs::read_to_string(repo().join("bench/kind").join(name)).unwrap()
}

#[test]
fn kind_suite_files_are_consistent() {
    let script = kind_file("run.sh");
    for (file, no_cni) in [("kind-cni-ebpf.yaml", true), ("kind-default.yaml", false)] {
        let c: KindCluster = serde_yaml::from_str(&kind_file(file)).unwrap();
        assert_eq!(
            (c.kind.as_str(), c.api_version.as_str()),
            ("Cluster", "kind.x-k8s.io/v1alpha4")
        );
        let roles: Vec<&str> = c.nodes.iter().map(|n| n.role.as_str()).collect();
        assert_eq!(roles, ["control-plane", "worker"], "{file}");
        assert_eq!(c.networking.disable_default_cni, no_cni, "{file}");
        // flannel's manifest assumes 10.244.0.0/16.
        assert_eq!(c.networking.pod_subnet.as_deref(), Some("10.244.0.0/16"));
        let cluster = file.trim_start_matches("kind-").trim_end_matches(".yaml");
        assert!(script.contains(cluster), "run.sh runs {cluster}");
    }

    // The pods: the server's hostPorts are the ports the script dials, and
    // both use the image the script builds.
    let text = kind_file("workload.yaml");
    let pods: Vec<k8s_openapi::api::core::v1::Pod> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| k8s_openapi::api::core::v1::Pod::deserialize(d).unwrap())
        .collect();
    assert_eq!(pods.len(), 2);
    let spec = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.spec.clone())
            .unwrap_or_else(|| panic!("pod {name}"))
    };
    let server = spec("bench-server");
    let host_ports: Vec<i32> = server.containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect();
    assert_eq!(host_ports, [8080, 11111, 5201]);
    for p in host_ports {
        assert!(
            script.contains(&format!("\"$node\" {p}")) || script.contains(&format!("-p {p}")),
            "run.sh dials hostPort {p}"
        );
    }
    for (pod, label) in [("bench-server", "server"), ("bench-client", "client")] {
        let s = spec(pod);
        let image = s.containers[0].image.clone().unwrap();
        assert!(
            script.contains(&format!("BENCH_IMAGE={image}")),
            "{pod} image {image}"
        );
        assert_eq!(s.node_selector.unwrap()["bench"], label);
        assert!(
            script.contains(&format!("bench={label}")),
            "run.sh labels a {label} node"
        );
    }
    // The plugin image is the one the DaemonSet names.
    let (_, ds) = manifest();
    let ds_image = ds
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .init_containers
        .unwrap()[0]
        .image
        .clone()
        .unwrap();
    assert!(script.contains(&format!("IMAGE={ds_image}")), "{ds_image}");
    assert!(kind_file("Containerfile.bench").contains("COPY crr.py /crr.py"));

    let path = repo().join("bench/kind/run.sh");
    let st = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(st.success(), "bash -n run.sh");
    let out = Command::new("shellcheck")
        .arg(&path)
        .output()
        .expect("shellcheck (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "shellcheck run.sh: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
