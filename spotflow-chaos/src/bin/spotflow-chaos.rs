//! `spotflow-chaos --upstream HOST:PORT [--listen 127.0.0.1:PORT] [--seed S] [--seconds N]`:
//! a proxy to `upstream` running a seeded random fault schedule for N seconds (default 300),
//! printing each event as it happens, then passing traffic until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use spotflow_chaos::{random_schedule, ChaosProxy};

fn usage(problem: &str) -> ! {
    eprintln!("{problem}\nusage: spotflow-chaos --upstream HOST:PORT [--listen ADDR] [--seed S] [--seconds N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let (mut upstream, mut listen, mut seed, mut seconds) = (None, "127.0.0.1:0".to_owned(), 1u64, 300u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--upstream" => upstream = Some(value),
            "--listen" => listen = value,
            "--seed" => seed = value.parse().unwrap_or_else(|_| usage("--seed takes a number")),
            "--seconds" => seconds = value.parse().unwrap_or_else(|_| usage("--seconds takes a number")),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let parse = |a: &str| a.parse::<SocketAddr>().unwrap_or_else(|_| usage(&format!("not an address: {a}")));
    let upstream = parse(&upstream.unwrap_or_else(|| usage("--upstream is required")));
    let proxy = match ChaosProxy::start_on(parse(&listen), upstream).await {
        Ok(p) => p,
        Err(e) => usage(&format!("cannot listen on {listen}: {e}")),
    };
    println!("listening on {}", proxy.addr());
    let schedule = random_schedule(seed, Duration::from_secs(seconds));
    let mut printed = 0;
    let run = proxy.run_schedule(&schedule);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = &mut run => break,
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let log = proxy.log();
        for line in &log[printed..] {
            println!("{line}");
        }
        printed = log.len();
    }
    for line in &proxy.log()[printed..] {
        println!("{line}");
    }
    let (passed, dropped) = proxy.bytes();
    println!("schedule done: {passed} bytes passed, {dropped} dropped; passing traffic until interrupted");
    let _ = tokio::signal::ctrl_c().await;
}
