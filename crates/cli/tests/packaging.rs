//! Packaging without a Docker engine: the Dockerfile is parsed and checked (multi-stage, non-root,
//! model volume, /health check), the commands it runs are run here directly (the locked build's
//! lock file, the entrypoint with the image's environment, the health-check command), and the
//! Kubernetes manifest is checked for its probes and autoscaler.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Dockerfile instructions: (keyword, arguments), comments dropped, continuations joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "the Dockerfile ends in a continuation");
    out
}

/// A JSON-array (exec form) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("not an exec-form JSON array: {args}: {e}"))
}

fn env_of(instructions: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for (_, args) in instructions.iter().filter(|(k, _)| k == "ENV") {
        for pair in args.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV needs KEY=VALUE: {pair}"));
            vars.push((k.to_string(), v.to_string()));
        }
    }
    vars
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_its_commands_run() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let all = instructions(&text);
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    for (keyword, args) in &all {
        assert!(
            KNOWN.contains(&keyword.as_str()),
            "unknown instruction {keyword}"
        );
        assert!(!args.is_empty(), "{keyword} without arguments");
    }
    assert_eq!(all[0].0, "FROM", "a Dockerfile starts with FROM");

    // Two stages: a named build stage, and a runtime stage that copies only the binary from it.
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: build + runtime");
    assert!(
        all[stages[0]].1.to_ascii_lowercase().ends_with(" as build"),
        "{}",
        all[stages[0]].1
    );
    let (build, runtime) = (&all[stages[0]..stages[1]], &all[stages[1]..]);
    assert!(runtime
        .iter()
        .any(|(k, a)| k == "COPY" && a.starts_with("--from=build ")));

    // Every COPY of the build stage names something in the repository.
    for (_, args) in build.iter().filter(|(k, _)| k == "COPY") {
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "COPY {src}: not in the repository"
            );
        }
    }
    // The build command: a locked release build of this package. --locked needs a current
    // Cargo.lock: check it the way cargo would, without building.
    let run = build
        .iter()
        .find(|(k, _)| k == "RUN")
        .map(|(_, a)| a.clone())
        .expect("RUN in the build stage");
    assert!(
        run.contains("cargo build --release --locked -p jina-embed"),
        "{run}"
    );
    assert!(root().join("crates/cli/Cargo.toml").exists());
    let metadata = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "jina-embed",
            "--depth",
            "0",
        ])
        .current_dir(root())
        .stdout(Stdio::null())
        .output()
        .expect("cargo metadata");
    assert!(
        metadata.status.success(),
        "cargo --locked would fail: {}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    assert!(run.contains("target/release/jina-embed"), "{run}");

    // Non-root, the model as a volume, the health check on /health.
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(uid != "root" && uid != "0", "runs as root: {user}");
    let env = env_of(runtime);
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("ENV {name}"))
    };
    let volumes = exec_form(
        &runtime
            .iter()
            .find(|(k, _)| k == "VOLUME")
            .expect("VOLUME")
            .1,
    );
    assert!(
        volumes
            .iter()
            .any(|v| var("JINA_MODEL").starts_with(&format!("{v}/"))),
        "JINA_MODEL is not under a VOLUME: {volumes:?}"
    );
    let health = &runtime
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .expect("HEALTHCHECK")
        .1;
    let health_cmd = exec_form(
        health
            .split_once("CMD ")
            .expect("HEALTHCHECK ... CMD [...]")
            .1,
    );
    assert!(
        health_cmd
            .iter()
            .any(|a| a.ends_with(&format!(":{}/health", var("JINA_PORT")))),
        "{health_cmd:?}"
    );
    let entrypoint = exec_form(
        &runtime
            .iter()
            .find(|(k, _)| k == "ENTRYPOINT")
            .expect("ENTRYPOINT")
            .1,
    );
    let cmd = exec_form(&runtime.iter().find(|(k, _)| k == "CMD").expect("CMD").1);
    assert_eq!(entrypoint, ["jina-embed"]);
    assert!(runtime
        .iter()
        .any(|(k, a)| k == "COPY" && a.ends_with("/usr/local/bin/jina-embed")));

    // Run what the container runs: ENTRYPOINT + CMD with the image's environment (the model
    // folder and port swapped for a fixture and a free port), then its health check command.
    let model = common::small_fixture("cli-packaging-small-fixture");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
        .to_string();
    let mut server = Command::new(env!("CARGO_BIN_EXE_jina-embed"));
    server
        .args(&cmd)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    server
        .env("JINA_MODEL", &model)
        .env("JINA_HOST", "127.0.0.1")
        .env("JINA_PORT", &port)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = server.spawn().expect("start the entrypoint");
    let health_cmd: Vec<String> = health_cmd
        .iter()
        .map(|a| a.replace(&format!(":{}/", var("JINA_PORT")), &format!(":{port}/")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthy = loop {
        let status = Command::new(&health_cmd[0])
            .args(&health_cmd[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => break true,
            Err(e) => {
                let _ = child.kill();
                panic!("cannot run the health check {health_cmd:?}: {e}");
            }
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = child.wait().expect("wait");
    assert!(healthy, "the health check never passed");
    assert!(
        stopped.success(),
        "the server did not stop cleanly on SIGTERM: {stopped}"
    );
}

#[test]
fn the_kubernetes_manifest_probes_health_and_autoscales() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes.yaml"))
        .expect("deploy/kubernetes.yaml");
    for needle in [
        "kind: Deployment",
        "kind: Service",
        "kind: HorizontalPodAutoscaler",
        "runAsNonRoot: true",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let at = text
            .find(&format!("{probe}:"))
            .unwrap_or_else(|| panic!("{probe}"));
        assert!(
            text[at..]
                .lines()
                .nth(1)
                .is_some_and(|l| l.contains("path: /health")),
            "{probe} is not on /health"
        );
    }
    // With the test venv, parse it as YAML and check the structure.
    let python = root().join(".venv/bin/python");
    if python.exists()
        && Command::new(&python)
            .args(["-c", "import yaml"])
            .status()
            .is_ok_and(|s| s.success())
    {
        let script = r#"
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
kinds = {d["kind"]: d for d in docs}
c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
assert all(c[p]["httpGet"]["path"] == "/health" for p in ("startupProbe", "readinessProbe", "livenessProbe"))
hpa = kinds["HorizontalPodAutoscaler"]["spec"]
assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] > hpa["minReplicas"]
env = {e["name"]: e.get("value") for e in c["env"]}
mounts = [m["mountPath"] for m in c["volumeMounts"]]
assert any(env["JINA_MODEL"].startswith(m + "/") for m in mounts), (env, mounts)
print("ok")
"#;
        let out = Command::new(&python)
            .args(["-c", script])
            .arg(root().join("deploy/kubernetes.yaml"))
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// docs/openapi.json is the server's OpenAPI document, as `GET /openapi.json` serves it for the
/// real model with API keys and the default limits.
/// Regenerate with `UPDATE_DOCS=1 cargo test --release -p jina-embed --test packaging`.
#[test]
fn docs_openapi_json_is_current() {
    let served = jina_server::openapi::Served::reference();
    let doc = serde_json::to_string_pretty(&jina_server::openapi::document(&served))
        .expect("serialise")
        + "\n";
    let path = root().join("docs/openapi.json");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &doc).expect("write docs/openapi.json");
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == doc,
        "docs/openapi.json is stale; regenerate it with UPDATE_DOCS=1 cargo test --release -p jina-embed --test packaging"
    );
}
