//! Enqueues messages from several threads into a durable store and prints `ACK run thread i`
//! after each append returned; runs until killed. Usage: `crash-child BACKEND DB RUN THREADS`.
//! With a shared backend (`shared-sqlite-…`) each thread is a device of its own in one file.

use std::io::Write;
use std::sync::Arc;

use spotflow_core::testkit::sample_message;
use spotflow_core::{OutgoingMessage, StreamTarget};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, backend, db, run, threads] = &args[..] else {
        eprintln!("usage: crash-child BACKEND DB RUN THREADS");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().unwrap_or(4);
    let opened = match spotflow_store_tests::open_for_threads(backend, std::path::Path::new(db), threads).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open: {e}");
            std::process::exit(3);
        }
    };
    println!("READY");
    let target = Arc::new(StreamTarget::default());
    let mut tasks = Vec::new();
    for t in 0..threads {
        let (store, target, run) = (opened.for_thread(t), target.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..1_000_000u64 {
                let message = OutgoingMessage {
                    target: target.clone(),
                    payload: bytes::Bytes::from(format!("{run} {t} {i} {}", "x".repeat(200))),
                    ..sample_message(0)
                };
                match store.append_message(message).await {
                    Ok(_) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ACK {run} {t} {i}");
                        let _ = out.flush();
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        std::process::exit(4);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
