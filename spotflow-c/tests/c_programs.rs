//! The C face from C: the examples (examples/c) built by gcc and clang, linked statically and
//! dynamically, with `-Wall -Wextra -Wpedantic -Werror`, and run against the emulator; the API
//! test (tests/c/api_test.c) under AddressSanitizer and UndefinedBehaviorSanitizer; the threads
//! test (tests/c/threads_test.c) under ThreadSanitizer while this test calls the device.
//!
//! They link the library this `cargo test` built (target/<profile>/libspotflow.a and .so). Where
//! gcc, g++, clang, clang++ or make is missing they are skipped with a message, unless
//! `SPOTFLOW_C_TESTS=required` (CI) makes that a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use spotflow_emulator::{Emulator, MessageQuery, MethodFailure};

const TOOLS: [&str; 5] = ["gcc", "g++", "clang", "clang++", "make"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The directory of the library this `cargo test` built: target/<profile>/deps, where this test
/// runs from (cargo copies it up to target/<profile> only for `cargo build`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
    assert!(dir.join("libspotflow.a").exists(), "{} has no libspotflow.a", dir.display());
    dir
}

fn tools_present() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| !Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let hint = "apt-get install gcc g++ clang make";
    assert!(
        std::env::var("SPOTFLOW_C_TESTS").as_deref() != Ok("required"),
        "SPOTFLOW_C_TESTS=required and {missing:?} missing ({hint})"
    );
    eprintln!("skipped: {missing:?} not installed ({hint}; SPOTFLOW_C_TESTS=required makes this a failure)");
    false
}

fn check(output: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The emulator with its CA in a file (for SSL_CERT_FILE), and the environment a C program
/// needs to reach it.
struct Platform {
    emu: Emulator,
    _dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

async fn platform() -> Platform {
    let dir = tempfile::tempdir().expect("temp dir");
    let emu = Emulator::builder().auto_approve(Some(Duration::from_millis(200))).start().await.expect("emulator");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).expect("ca.pem");
    let env = vec![
        ("SPOTFLOW_PROVISIONING_TOKEN".into(), emu.create_provisioning_token()),
        ("SPOTFLOW_INSTANCE".into(), emu.https_url()),
        ("SPOTFLOW_MQTT_PORT".into(), emu.mqtts_addr().expect("MQTT over TLS").port().to_string()),
        ("SSL_CERT_FILE".into(), ca.display().to_string()),
        ("SSL_CERT_DIR".into(), dir.path().display().to_string()),
    ];
    Platform { emu, _dir: dir, env }
}

impl Platform {
    /// Runs `program` in `cwd` (its database lives there) with the emulator's environment.
    fn run(&self, program: &Path, cwd: &Path, extra: &[(&str, &str)]) -> Output {
        Command::new(program)
            .current_dir(cwd)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    async fn stored(&self, hub_id: &str) -> usize {
        self.emu
            .messages(MessageQuery { hub_device_id: Some(hub_id.into()), limit: Some(100_000), ..Default::default() })
            .await
            .iter()
            .filter(|m| m.stream.as_deref() != Some(spotflow_emulator::logs::LOG_STREAM))
            .count()
    }
}

/// The workspace from the example's "… registered in workspace W." line.
fn workspace(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split(" registered in workspace ").nth(1))
        .map(|w| w.trim_end_matches('.').to_string())
        .unwrap_or_else(|| panic!("no registration line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_build_with_gcc_and_clang_static_and_dynamic_and_run() {
    if !tools_present() {
        return;
    }
    let lib = lib_dir();
    let build = tempfile::tempdir().expect("temp dir");
    for (cc, cxx) in [("gcc", "g++"), ("clang", "clang++")] {
        for link in ["static", "dynamic"] {
            let what = format!("{cc} {link}");
            let out = build.path().join(format!("{cc}-{link}"));
            std::fs::create_dir_all(&out).expect("out dir");
            let made = Command::new("make")
                .arg("-C")
                .arg(repo().join("examples/c"))
                .args([format!("CC={cc}"), format!("CXX={cxx}"), format!("LINK={link}")])
                .arg(format!("OUT={}", out.display()))
                .arg(format!("SPOTFLOW_LIB={}", lib.display()))
                .args(["CFLAGS=-O1 -std=c99", "CXXFLAGS=-O1 -std=c++17"])
                .output()
                .expect("make");
            check(made, &format!("make ({what})"));

            // Each build against its own platform: the reference flow, 20 messages.
            let platform = platform().await;
            let cwd = tempfile::tempdir().expect("cwd");
            let quick = [("SPOTFLOW_MESSAGES", "20"), ("SPOTFLOW_INTERVAL_MS", "0")];
            let stdout = check(platform.run(&out.join("get_started"), cwd.path(), &quick), &what);
            assert!(stdout.contains("Sent 20 messages.") && stdout.contains("Reported properties sent."), "{stdout}");
            let hub_id = format!("{}:my-device", workspace(&stdout));
            assert_eq!(platform.stored(&hub_id).await, 20, "{what}: stored messages");
            let reported = platform.emu.twin(&hub_id).expect("twin").reported;
            assert_eq!(reported.get("messagesSent"), Some(&json!(20)), "{what}: reported {reported:?}");

            // A configuration change, then the same device again (registered: no provisioning):
            // its callback receives it.
            let desired = json!({"sampleIntervalSeconds": 10});
            platform.emu.update_desired(&hub_id, desired.as_object().cloned().unwrap_or_default()).expect("desired");
            let again = [("SPOTFLOW_MESSAGES", "5"), ("SPOTFLOW_INTERVAL_MS", "0")];
            let stdout = check(platform.run(&out.join("get_started"), cwd.path(), &again), &what);
            assert!(stdout.contains(r#""sampleIntervalSeconds":10"#), "{what}: no desired properties in:\n{stdout}");
            assert!(!stdout.contains("Provisioning operation"), "{what}: provisioned again:\n{stdout}");
            assert_eq!(platform.stored(&hub_id).await, 25, "{what}: stored messages after the second run");

            // The C++ example: enqueued, then awaited; Brotli-compressed.
            let stdout = check(platform.run(&out.join("get_started_cpp"), cwd.path(), &quick), &format!("{what} C++"));
            assert!(stdout.contains("Sent 20 messages (0 pending)."), "{stdout}");
            let cpp_hub = hub_id.replace(":my-device", ":my-cpp-device");
            assert_eq!(platform.stored(&cpp_hub).await, 20, "{what} C++: stored messages");
        }
    }
}

/// Builds a test program of tests/c with `cc` and `flags`, linked with the static library (or
/// the shared one).
fn build_test(name: &str, cc: &str, flags: &[&str], out: &Path, shared: bool) -> PathBuf {
    let lib = lib_dir();
    let link: Vec<String> = if shared {
        vec![format!("-L{}", lib.display()), "-lspotflow".into(), format!("-Wl,-rpath,{}", lib.display())]
    } else {
        vec![lib.join("libspotflow.a").display().to_string()]
    };
    let program = out.join(format!("{name}-{cc}"));
    let built = Command::new(cc)
        .args(["-std=c99", "-g", "-O1", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg("-I")
        .arg(repo().join("spotflow-c/include"))
        .arg("-o")
        .arg(&program)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c")))
        .args(&link)
        .args(["-lpthread", "-lm", "-ldl"])
        .output()
        .expect("the C compiler");
    check(built, &format!("{cc} {name}.c"));
    program
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_and_error_path_under_address_and_undefined_behaviour_sanitizers() {
    if !tools_present() {
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    for cc in ["gcc", "clang"] {
        let flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"];
        let program = build_test("api_test", cc, &flags, out.path(), false);
        let platform = platform().await;
        let cwd = tempfile::tempdir().expect("cwd");
        let sanitizers = [
            ("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=23"),
            ("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1"),
        ];
        // The platform sends two cloud-to-device messages and rolls out an update once the program's
        // device exists.
        let output = std::thread::scope(|scope| {
            let emu = &platform.emu;
            scope.spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while std::time::Instant::now() < deadline {
                    if let Some(d) = emu.devices().into_iter().find(|d| d.device_id == "c-api-device") {
                        let hub_id = format!("{}:{}", d.workspace_id, d.device_id);
                        for i in 0..2 {
                            let props = vec![("n".to_owned(), i.to_string())];
                            emu.send_c2d(&hub_id, props, format!("c2d-{i}").into_bytes(), Duration::from_secs(60))
                                .expect("queued");
                        }
                        // And a software update for its update agent.
                        let artifact = emu.publish_artifact(b"c-firmware 2".to_vec().into(), "2").expect("published");
                        let rollout = spotflow_emulator::updates::RolloutRequest {
                            artifact: artifact.id,
                            devices: vec![hub_id],
                            ..Default::default()
                        };
                        emu.start_rollout(&rollout).expect("rolled out");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            platform.run(&program, cwd.path(), &sanitizers)
        });
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let stdout = check(output, &format!("api_test ({cc}, ASan + UBSan)"));
        assert!(stdout.contains("checks passed"), "{stdout}");
        assert!(!stderr.contains("Sanitizer") && !stderr.contains("runtime error"), "{cc}: {stderr}");
        let hub_id = format!("{}:c-api-device", platform.emu.devices().first().expect("a device").workspace_id);
        // 50 + 1 empty + 1 advanced + 2 completions + 2 sent.
        assert_eq!(platform.stored(&hub_id).await, 56, "{cc}: stored messages");
        let reported = platform.emu.twin(&hub_id).expect("twin").reported;
        assert_eq!(reported.get("from"), Some(&Value::from("api_test")), "{cc}: reported {reported:?}");
        let logs = platform
            .emu
            .logs(spotflow_emulator::logs::LogQuery { hub_device_id: Some(hub_id.clone()), ..Default::default() })
            .await;
        let logs: Vec<_> = logs.iter().map(|e| (e.record["level"].as_str(), e.record["message"].as_str())).collect();
        assert_eq!(logs, [(Some("INFO"), Some("pressure 7 bar")), (Some("ERROR"), Some("valve stuck"))], "{cc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_on_the_sdk_threads_while_three_threads_send_under_thread_sanitizer() {
    if !tools_present() {
        return;
    }
    let out = tempfile::tempdir().expect("temp dir");
    // The library is not instrumented (a Rust build with ThreadSanitizer needs nightly and its
    // standard library rebuilt): its atomics are invisible to ThreadSanitizer, which would take
    // the hand-offs inside it (memcpy, intercepted) for races. Linked as a shared library, those
    // are left out by `called_from_lib`; every access of the C program (its threads, the
    // callbacks it gives the library, the strings it is given) is checked.
    let program = build_test("threads_test", "clang", &["-fsanitize=thread"], out.path(), true);
    let suppressions = out.path().join("tsan.supp");
    std::fs::write(&suppressions, "called_from_lib:libspotflow.so\n").expect("suppressions");
    let tsan = format!("halt_on_error=1:exitcode=66:suppressions={}", suppressions.display());
    let platform = platform().await;
    let cwd = tempfile::tempdir().expect("cwd");
    const CALLS: u64 = 20;
    const UPDATES: u64 = 10;
    let mut child = Command::new(&program)
        .current_dir(cwd.path())
        .envs(platform.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("METHOD_CALLS", CALLS.to_string())
        // The first desired properties are version 1; each update adds one.
        .env("DESIRED_VERSION", (1 + UPDATES).to_string())
        .env("TSAN_OPTIONS", &tsan)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("threads_test");
    let (ready_tx, ready) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let started = tokio::task::spawn_blocking(move || ready.recv_timeout(Duration::from_secs(60))).await.expect("join");
    let mut failures = Vec::new();
    if started.is_ok() {
        let hub_id = format!("{}:threads-device", platform.emu.devices().first().expect("a device").workspace_id);
        for i in 0..CALLS.max(UPDATES) {
            // Stopped (ThreadSanitizer halts it at a race): its output tells why.
            if child.try_wait().expect("try_wait").is_some() {
                failures.push(format!("threads_test ended before call {i}"));
                break;
            }
            if i < UPDATES {
                let patch = json!({"update": i}).as_object().cloned().unwrap_or_default();
                platform.emu.update_desired(&hub_id, patch).expect("desired");
            }
            if i < CALLS {
                // The device connects (and subscribes) in the background after start: a call
                // before that is retried, for at most 10 s.
                let mut answer = Err(MethodFailure::NotConnected);
                for _ in 0..100 {
                    if child.try_wait().expect("try_wait").is_some() {
                        break;
                    }
                    answer =
                        platform.emu.invoke_method(&hub_id, "count", b"{}".to_vec(), Duration::from_secs(20)).await;
                    if !matches!(answer, Err(MethodFailure::NotConnected)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                match answer {
                    Ok(answer) if answer.status == 200 => {}
                    other => failures.push(format!("call {i}: {other:?}")),
                }
            }
        }
    }
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("wait");
    let lines = reader.join().expect("reader");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(started.is_ok(), "threads_test never got READY:\n{}\n{stderr}", lines.join("\n"));
    assert!(output.status.success(), "threads_test: {}\n{}\n{stderr}", output.status, lines.join("\n"));
    assert!(failures.is_empty(), "method calls failed: {failures:?}");
    assert!(lines.iter().any(|l| l == "threads_test: passed"), "{}", lines.join("\n"));
    assert!(!stderr.contains("ThreadSanitizer"), "{stderr}");
    let hub_id = format!("{}:threads-device", platform.emu.devices().first().expect("a device").workspace_id);
    assert_eq!(platform.stored(&hub_id).await, 900, "stored messages");
}

/// The ```c blocks of the user guide, docs/c.md and this crate's README, each compiled (to an object file) by gcc
/// and clang against `spotflow.h` with `-std=c99 -Wall -Wextra -Wpedantic -Werror`: the guide's C
/// cannot drift from the header.
#[test]
fn the_c_blocks_of_the_guide_compile_with_gcc_and_clang() {
    if !tools_present() {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("spotflow-device/guide"))
        .expect("the guide")
        .map(|entry| entry.expect("guide entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(repo().join("docs/c.md"));
    files.push(repo().join("spotflow-c/README.md"));
    files.sort();
    let out = tempfile::tempdir().expect("temporary directory");
    let mut compiled = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a Markdown file");
        let mut block: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_end() == "```c" => block = Some((n + 1, String::new())),
                Some((start, code)) if line.trim_end() == "```" => {
                    let name = format!("{}-{start}", file.file_stem().unwrap().to_string_lossy());
                    let source = out.path().join(format!("{name}.c"));
                    std::fs::write(&source, code.as_bytes()).expect("write the block");
                    for cc in ["gcc", "clang"] {
                        let output = Command::new(cc)
                            .args(["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c", "-I"])
                            .arg(repo().join("spotflow-c/include"))
                            .arg(&source)
                            .arg("-o")
                            .arg(out.path().join(format!("{name}-{cc}.o")))
                            .output()
                            .expect("run the C compiler");
                        check(output, &format!("{cc} on the block at {}:{start}", file.display()));
                    }
                    compiled += 1;
                    block = None;
                }
                Some((_, code)) => {
                    code.push_str(line);
                    code.push('\n');
                }
                None => {}
            }
        }
        assert!(block.is_none(), "{}: a ```c block is not closed", file.display());
    }
    assert!(compiled >= 1, "no ```c block found in {files:?}");
}
