//! The durability promise, proved by killing real processes: a child enqueues from several
//! threads and prints each acknowledged enqueue; the parent kills it with SIGKILL (TerminateProcess on Windows) at a random
//! moment, reopens the database, and checks that every acknowledged message is there exactly
//! once and in order, with sequence numbers never used twice (in a shared store: each device's messages in its own queue). 200 cycles per backend (`SPOTFLOW_CRASH_CYCLES` for a longer soak).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Writers in each child (devices, in a shared store).
const THREADS: usize = 4;

fn cycles() -> usize {
    std::env::var("SPOTFLOW_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)
}

fn crash_cycles(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ backend.len() as u64);
    let mut total_acked = 0usize;
    // Sequence numbers handed out and acknowledged (the platform's duplicate check relies on
    // them): never reused, even for messages that were removed before a crash (per store; per
    // device in a shared one, where each device numbers its own).
    let mut highest_seq: BTreeMap<usize, u64> = BTreeMap::new();
    for run in 0..cycles() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-child"))
            .args([backend, db.to_str().unwrap(), &run.to_string(), &THREADS.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Once the store is open, kill at a random moment of the child's work.
        let ready = rx.recv_timeout(Duration::from_secs(30));
        if ready.as_deref() != Ok("READY") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{backend} run {run}: the child did not open the store ({ready:?}, {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(rng.u64(1..40)));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed");
        reader.join().unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        let acked: Vec<(usize, u64)> = lines
            .iter()
            .filter_map(|l| {
                let mut p = l.strip_prefix("ACK ")?.split(' ');
                let r: usize = p.next()?.parse().ok()?;
                assert_eq!(r, run);
                Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
            })
            .collect();
        total_acked += acked.len();
        rt.block_on(async {
            let opened =
                spotflow_store_tests::open_for_threads(backend, &db, THREADS).await.expect("reopens after kill -9");
            let mut stored = Vec::new();
            for (owner, store) in opened.stores.iter().enumerate() {
                for m in store.read_messages(None, usize::MAX).await.unwrap() {
                    stored.push((owner, m));
                }
            }
            let mut seen: HashMap<(usize, u64), usize> = HashMap::new();
            let mut per_thread: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (owner, m) in &stored {
                let text = String::from_utf8(m.message.payload.to_vec()).expect("payload intact");
                let mut p = text.split(' ');
                let r: usize = p.next().unwrap().parse().unwrap();
                assert_eq!(r, run, "earlier runs were removed");
                let t: usize = p.next().unwrap().parse().unwrap();
                if opened.stores.len() > 1 {
                    assert_eq!(t, *owner, "{backend} run {run}: device {t}'s message in device {owner}'s queue");
                }
                let i: u64 = p.next().unwrap().parse().unwrap();
                assert_eq!(p.next().map(str::len), Some(200), "payload intact");
                *seen.entry((t, i)).or_default() += 1;
                per_thread.entry(t).or_default().push(i);
            }
            for key in &acked {
                assert_eq!(
                    seen.get(key),
                    Some(&1),
                    "{backend} run {run}: acknowledged {key:?} must be stored exactly once"
                );
            }
            for (t, is) in &per_thread {
                assert!(
                    is.windows(2).all(|w| w[0] + 1 == w[1]),
                    "{backend} run {run}: thread {t} in order without gaps"
                );
                assert_eq!(is.first(), Some(&0), "{backend} run {run}: thread {t} starts at its first message");
            }
            for (owner, store) in opened.stores.iter().enumerate() {
                let own: Vec<u64> = stored.iter().filter(|(o, _)| *o == owner).map(|(_, m)| m.seq).collect();
                let highest = highest_seq.entry(owner).or_insert(0);
                assert!(
                    own.iter().all(|seq| seq > highest),
                    "{backend} run {run}: sequence numbers from {highest} down were used again: {:?}",
                    own.iter().min()
                );
                *highest = own.iter().copied().max().unwrap_or(*highest);
                store.remove_messages(&own).await.unwrap();
                assert_eq!(store.queue_stats().await.unwrap().count, 0);
            }
            opened.close().await.unwrap();
        });
    }
    assert!(
        total_acked > cycles(),
        "{backend}: the children acknowledged enqueues before being killed ({total_acked})"
    );
    println!("{backend}: {} kill -9 cycles, {total_acked} acknowledged messages all found exactly once", cycles());
}

#[test]
fn sqlite_power_loss_safe_survives_kill_9() {
    crash_cycles("sqlite-power-loss-safe");
}

#[test]
fn sqlite_crash_safe_survives_kill_9() {
    crash_cycles("sqlite-crash-safe");
}

#[test]
fn a_shared_sqlite_store_of_four_devices_survives_kill_9() {
    crash_cycles("shared-sqlite-power-loss-safe");
}

#[test]
fn a_crash_safe_shared_sqlite_store_of_four_devices_survives_kill_9() {
    crash_cycles("shared-sqlite-crash-safe");
}

#[test]
fn sled_survives_kill_9() {
    crash_cycles("sled");
}

#[test]
fn sled_crash_safe_survives_kill_9() {
    crash_cycles("sled-crash-safe");
}

#[test]
fn a_database_held_by_a_live_process_is_refused_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for backend in spotflow_store_tests::BACKENDS {
        let db = db.with_extension(format!("{backend}.db"));
        let holder = rt.block_on(spotflow_store_tests::open(backend, &db)).expect("the test process opens it");
        let out = Command::new(env!("CARGO_BIN_EXE_crash-child"))
            .args([backend, db.to_str().unwrap(), "0", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("child runs");
        assert_eq!(out.status.code(), Some(3), "{backend}: the second process cannot open it");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("held"), "{backend}: the error names the file: {stderr}");
        rt.block_on(holder.close()).unwrap();
    }
}
