//! The deployment files in `deploy/` are checked by the tools operators would
//! use: `systemd-analyze verify` for the units, hadolint for the Dockerfile,
//! kubernetes-validate (the Kubernetes OpenAPI schemas) for the manifests, and
//! a structural check of the compose file. `cargo xtask test` installs the
//! tools. No container engine runs here: the images are not built.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): `cargo xtask test` installs it"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Where this workspace's binaries were built (beside this test's directory).
fn built_binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/deploy-<hash>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let bin = built_binaries();
    let dir = tempfile::tempdir().unwrap();
    for unit in ["icecast-poller.service", "icecast-redirector.service"] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        for required in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "EnvironmentFile=",
            "Restart=on-failure",
        ] {
            assert!(text.contains(required), "{unit} lacks {required}");
        }
        // verify checks that ExecStart is executable: point it at our build.
        let binary = bin.join(unit.trim_end_matches(".service"));
        assert!(binary.exists(), "{} is not built", binary.display());
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let poller = dir.path().join("icecast-poller.service");
    let redirector = dir.path().join("icecast-redirector.service");
    let output = run(
        "systemd-analyze",
        &[
            "verify",
            poller.to_str().unwrap(),
            redirector.to_str().unwrap(),
        ],
    );
    // It reports unknown keys and bad values as warnings with status 0: any output fails.
    let report = text(&output);
    assert!(
        output.status.success() && report.trim().is_empty(),
        "systemd-analyze verify: {report}"
    );
}

#[test]
fn the_redirector_unit_reads_geoip_read_only_and_binds_port_80_without_root() {
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/icecast-redirector.service")).unwrap();
    assert!(unit.contains("ReadOnlyPaths=/var/lib/GeoIP"));
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    assert!(unit.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE"));
    let poller =
        std::fs::read_to_string(root().join("deploy/systemd/icecast-poller.service")).unwrap();
    assert!(
        poller.contains("CapabilityBoundingSet=\n"),
        "the poller needs no capability"
    );
}

#[test]
fn dockerfile_passes_hadolint_and_runs_as_non_root() {
    let output = run("hadolint", &["--no-color", "deploy/docker/Dockerfile"]);
    assert!(output.status.success(), "hadolint: {}", text(&output));
    let dockerfile = std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        stages.len() >= 3,
        "a build stage and one per service: {stages:?}"
    );
    // Every final stage switches to a non-root user.
    for stage in dockerfile.split("\nFROM ").skip(2) {
        assert!(
            stage.contains("\nUSER 65532"),
            "stage without a non-root USER: {stage}"
        );
    }
}

/// A YAML file of the repository as JSON (PyYAML comes with kubernetes-validate).
fn yaml_as_json(path: &str) -> serde_json::Value {
    let output = run(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            path,
        ],
    );
    assert!(output.status.success(), "{path}: {}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn compose_runs_redis_a_poller_and_two_redirectors_from_the_dockerfile() {
    let compose = yaml_as_json("deploy/docker/compose.yaml");
    let services = compose["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["poller", "redirector-1", "redirector-2", "redis"]);
    let dockerfile = std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).unwrap();
    for name in ["poller", "redirector-1", "redirector-2"] {
        let service = &services[name];
        let target = service["build"]["target"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!(" AS {target}\n")),
            "{name}: no stage {target} in the Dockerfile"
        );
        let dockerfile_path = service["build"]["dockerfile"].as_str().unwrap();
        let context = root()
            .join("deploy/docker")
            .join(service["build"]["context"].as_str().unwrap());
        assert!(
            context.join(dockerfile_path).exists(),
            "{name}: {dockerfile_path}"
        );
        let env = service["environment"].as_object().unwrap();
        assert!(
            env.contains_key("ICB_ADMIN_TOKEN"),
            "{name}: admin exposed without a token"
        );
        assert_eq!(env["ICB_REDIS"], "redis://redis:6379/", "{name}");
        assert!(service.get("privileged").is_none(), "{name}");
    }
    let ports = |name: &str| services[name]["ports"][0].as_str().unwrap().to_owned();
    assert_ne!(ports("redirector-1"), ports("redirector-2"));
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let manifests: Vec<String> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(manifests.len() >= 4, "{manifests:?}");
    let mut args = vec!["--strict", "--kubernetes-version", "1.33"];
    args.extend(manifests.iter().map(String::as_str));
    let output = run("kubernetes-validate", &args);
    let report = text(&output);
    assert!(output.status.success(), "kubernetes-validate: {report}");
    for kind in [
        "deployment/icecast-redirector",
        "deployment/icecast-poller",
        "service/icecast-redirector",
        "horizontalpodautoscaler/icecast-redirector",
        "configmap/icecast-balancer-fleet",
        "secret/icecast-balancer",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{kind}: {report}"
        );
    }
}

#[test]
fn kubernetes_probes_use_grpc_health_where_it_means_ready() {
    let redirector = std::fs::read_to_string(root().join("deploy/k8s/redirector.yaml")).unwrap();
    assert!(redirector.contains("readinessProbe:\n            grpc:\n              port: 7071"));
    // A standby poller is NOT_SERVING by design: gRPC health must not restart it.
    let poller = std::fs::read_to_string(root().join("deploy/k8s/poller.yaml")).unwrap();
    assert!(
        !poller.contains("grpc:"),
        "the poller's probes must not use gRPC health"
    );
}

#[test]
fn alert_rules_parse_as_promql_and_are_documented() {
    let rules = yaml_as_json("deploy/prometheus/alerts.yaml");
    let rules = rules["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 8, "{}", rules.len());
    let exprs: Vec<&str> = rules.iter().map(|r| r["expr"].as_str().unwrap()).collect();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let tools = target.join("tools/node_modules");
    assert!(
        tools.join("@prometheus-io/lezer-promql").exists(),
        "the PromQL parser is missing: `cargo xtask test` installs it"
    );
    let mut check = Command::new("node")
        .arg(root().join("xtask/tests/promql-check.cjs"))
        .env("NODE_PATH", &tools)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node: `cargo xtask test` needs Node.js");
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&exprs).unwrap().as_bytes())
            .unwrap();
    }
    let output = check.wait_with_output().unwrap();
    assert!(output.status.success(), "PromQL: {}", text(&output));
    // Every alert has a severity and is explained in docs/operations.md.
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name} is not in docs/operations.md"
        );
    }
}
