//! Compression benchmark: our settings against the official SDK's, in one process.
//!
//! `cargo run --release --manifest-path interop/official-sdk/Cargo.toml --target-dir target/interop
//! --bin compression-bench [-- --quick]`
//!
//! The corpus (generated, seeded): 2,000 small JSON telemetry messages (100–500 B, each
//! compressed on its own), a 64 KiB JSON batch, a 1 MiB CSV log, a 1 MiB binary sensor dump, and
//! 2,000 messages of exactly 256 B for the "wire bytes per 256 B message" column. For each setting:
//! ratio (raw / wire bytes; a payload that does not shrink is sent as it is), compress and
//! decompress MB/s (medians), and the ratio of ours to the official SDK's settings.
//!
//! The official SDK's `Fastest`/`SmallestSize` are its `compress_message` (spotflow 0.8.1,
//! `src/iothub/sender.rs`): `BrotliCompress` with quality 1 or 11 and default parameters, made
//! here with the brotli version it links (3.5.0); ours are `spotflow_core::Compression` (brotli
//! 9). Both run in this process, in rounds that measure every setting once, so that a slow or fast
//! stretch of the machine hits every row alike. Every row is decoded by the same decoder
//! (`spotflow_core::decompress`), as the platform decodes them all alike.

use std::time::Instant;

use spotflow_core::{decompress, Compression, ContentEncoding};

struct CorpusFile {
    name: &'static str,
    messages: Vec<Vec<u8>>,
}

impl CorpusFile {
    fn raw(&self) -> usize {
        self.messages.iter().map(Vec::len).sum()
    }
}

fn telemetry(r: &mut fastrand::Rng, i: usize) -> String {
    let mut s = format!(
        "{{\"deviceTime\":\"2026-12-01T05:{:02}:{:02}.{:03}Z\",\"temperatureCelsius\":{:.2},\"humidityPercent\":{:.1}",
        (i / 60) % 60,
        i % 60,
        r.u32(0..1000),
        20.0 + r.f64() * 5.0,
        40.0 + r.f64() * 20.0
    );
    for k in 0..r.usize(0..6) {
        let status = ["ok", "warn", "error"][r.usize(0..3)];
        s.push_str(&format!(",\"sensor{k}\":{{\"value\":{:.3},\"status\":\"{status}\"}}", r.f64() * 100.0));
    }
    s.push('}');
    s
}

/// The corpus, the same bytes on every run.
fn corpus() -> Vec<CorpusFile> {
    let mut r = fastrand::Rng::with_seed(7);
    let small: Vec<Vec<u8>> = (0..2000).map(|i| telemetry(&mut r, i).into_bytes()).collect();
    let fixed: Vec<Vec<u8>> = (0..2000)
        .map(|i| {
            let mut s = telemetry(&mut r, i);
            s.truncate(s.len().min(240));
            while s.len() < 256 {
                s.insert(s.len() - 1, ' ');
            }
            s.into_bytes()
        })
        .collect();
    let mut batch = String::from("[");
    let mut i = 0u64;
    while batch.len() < 64 * 1024 - 200 {
        if i > 0 {
            batch.push(',');
        }
        batch.push_str(&format!(
            "{{\"t\":{},\"temperatureCelsius\":{:.2},\"pressureHpa\":{:.1},\"state\":\"{}\"}}",
            1_780_000_000_000u64 + i * 1000 + r.u64(0..50),
            20.0 + r.f64() * 5.0,
            1000.0 + r.f64() * 30.0,
            ["idle", "running", "cooling"][r.usize(0..3)]
        ));
        i += 1;
    }
    batch.push(']');
    let mut csv = String::from("timestamp,level,component,message,duration_ms\n");
    let components = ["mqtt", "store", "sensor", "gps", "modem"];
    let levels = ["INFO", "WARN", "DEBUG", "ERROR"];
    let texts = [
        "connected to broker",
        "reading sample",
        "flush completed",
        "signal strength changed",
        "retrying request",
        "queue depth",
    ];
    i = 0;
    while csv.len() < 1 << 20 {
        csv.push_str(&format!(
            "2026-12-01T{:02}:{:02}:{:02}.{:03}Z,{},{},{} {},{}\n",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            r.u32(0..1000),
            levels[r.usize(0..4)],
            components[r.usize(0..5)],
            texts[r.usize(0..6)],
            r.u32(0..10000),
            r.u32(0..500)
        ));
        i += 1;
    }
    csv.truncate(1 << 20);
    // Four slowly drifting 16-bit channels and a 12-bit status word per sample.
    let mut bin = Vec::with_capacity(1 << 20);
    let mut v = [0f32; 4];
    while bin.len() < 1 << 20 {
        for ch in &mut v {
            *ch += (r.f32() - 0.5) * 0.1;
            bin.extend_from_slice(&((*ch * 1000.0) as i16).to_le_bytes());
        }
        bin.extend_from_slice(&(r.u16(..) & 0x0fff).to_le_bytes());
    }
    bin.truncate(1 << 20);
    vec![
        CorpusFile { name: "small-json.jsonl", messages: small },
        CorpusFile { name: "batch-64k.json", messages: vec![batch.into_bytes()] },
        CorpusFile { name: "log-1m.csv", messages: vec![csv.into_bytes()] },
        CorpusFile { name: "sensor-1m.bin", messages: vec![bin] },
        CorpusFile { name: "fixed-256.jsonl", messages: fixed },
    ]
}

#[derive(Clone, Copy)]
struct Figures {
    raw: usize,
    wire: usize,
    compress_s: f64,
    decompress_s: f64,
    /// Whether any payload was sent compressed (and so decoded).
    decoded: bool,
}

impl Figures {
    fn ratio(&self) -> f64 {
        self.raw as f64 / self.wire as f64
    }
    fn compress_mbs(&self) -> f64 {
        self.raw as f64 / self.compress_s / 1e6
    }
    fn decompress_mbs(&self) -> f64 {
        self.raw as f64 / self.decompress_s / 1e6
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One timed pass: compresses every message of `file` with `f` (payloads that do not shrink are
/// sent raw), then decodes the results.
fn measure_once(file: &CorpusFile, f: &dyn Fn(&[u8]) -> Option<(ContentEncoding, Vec<u8>)>) -> Figures {
    let start = Instant::now();
    let outputs: Vec<_> = file.messages.iter().map(|m| f(m)).collect();
    let compress_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for (out, m) in outputs.iter().zip(&file.messages) {
        if let Some((enc, data)) = out {
            let back = decompress(*enc, data).expect("decodes");
            assert_eq!(back.len(), m.len());
        }
    }
    let decompress_s = start.elapsed().as_secs_f64().max(1e-9);
    let wire = outputs.iter().zip(&file.messages).map(|(o, m)| o.as_ref().map_or(m.len(), |(_, d)| d.len())).sum();
    Figures { raw: file.raw(), wire, compress_s, decompress_s, decoded: outputs.iter().any(Option::is_some) }
}

/// Medians of the passes (the wire size is the same in every pass).
fn medians(passes: &[Figures]) -> Figures {
    Figures {
        raw: passes[0].raw,
        wire: passes[0].wire,
        compress_s: median(passes.iter().map(|f| f.compress_s).collect()),
        decompress_s: median(passes.iter().map(|f| f.decompress_s).collect()),
        decoded: passes[0].decoded,
    }
}

/// The official SDK's `compress_message` (brotli 3.5.0, `BrotliCompress`, quality `q`, default
/// parameters), and its rule: sent compressed only when smaller.
fn official(q: i32, payload: &[u8]) -> Option<(ContentEncoding, Vec<u8>)> {
    let params = brotli::enc::BrotliEncoderParams { quality: q, ..Default::default() };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &payload[..], &mut out, &params).ok()?;
    (out.len() < payload.len()).then_some((ContentEncoding::Brotli, out))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 5 };
    let files = corpus();
    // Settings measured in process.
    type Setting = (&'static str, Box<dyn Fn(&[u8]) -> Option<(ContentEncoding, Vec<u8>)>>);
    let mut settings: Vec<Setting> = vec![
        ("ours Fastest (br q1)", Box::new(|p| Compression::Fastest.compress(p))),
        ("ours SmallestSize (br q11 w24)", Box::new(|p| Compression::SmallestSize.compress(p))),
        ("Lz4 (frame)", Box::new(|p| Compression::Lz4.compress(p))),
    ];
    for level in [1, 3, 9, 19] {
        let name: &'static str = Box::leak(format!("Zstd level {level}").into_boxed_str());
        settings.push((name, Box::new(move |p| Compression::Zstd { level }.compress(p))));
    }
    // Warm-up (CPU clock, allocator): one untimed pass of the fast settings over the corpus.
    for file in &files {
        for m in &file.messages {
            std::hint::black_box(Compression::Fastest.compress(m));
            std::hint::black_box(Compression::Lz4.compress(m));
        }
    }
    // Rounds: each round measures every setting once, so that a slow or fast stretch of the
    // machine hits every row alike; the table shows medians.
    settings.push(("official q1", Box::new(|p| official(1, p))));
    settings.push(("official q11", Box::new(|p| official(11, p))));
    let mut passes: Vec<Vec<Vec<Figures>>> = vec![vec![Vec::new(); files.len()]; settings.len()];
    for round in 0..reps {
        eprintln!("round {} of {reps} ...", round + 1);
        for (si, (_, f)) in settings.iter().enumerate() {
            for (fi, file) in files.iter().enumerate() {
                passes[si][fi].push(measure_once(file, f.as_ref()));
            }
        }
    }
    let table: Vec<(String, Vec<Figures>)> = settings
        .iter()
        .zip(&passes)
        .map(|((name, _), p)| (name.to_string(), p.iter().map(|f| medians(f)).collect()))
        .collect();

    println!("\n## Compression (ratio = raw / wire bytes; MB/s of raw data; median of {reps} run(s))\n");
    print!("| setting |");
    for file in &files[..4] {
        print!(" {} ratio | comp MB/s | decomp MB/s |", file.name);
    }
    println!(" wire B per 256 B msg |");
    print!("|---|");
    for _ in &files[..4] {
        print!("---|---|---|");
    }
    println!("---|");
    for (name, row) in &table {
        print!("| {name} |");
        for f in &row[..4] {
            let decode = if f.decoded { format!("{:.0}", f.decompress_mbs()) } else { "– (sent raw)".into() };
            print!(" {:.2} | {:.1} | {decode} |", f.ratio(), f.compress_mbs());
        }
        let fixed = &row[4];
        println!(" {:.1} |", fixed.wire as f64 / files[4].messages.len() as f64);
    }
    let find =
        |name: &str| &table.iter().find(|(n, _)| n == name || n.starts_with(&format!("{name} ("))).expect("row").1;
    println!("\n## Ours / official (ratio of ratios and of compress speeds; targets: both >= 1.00 for Fastest, size ratio >= 1.00 for SmallestSize)\n");
    println!("| file | Fastest size | Fastest speed | SmallestSize size | SmallestSize speed |");
    println!("|---|---|---|---|---|");
    let (fast, small) = (find("ours Fastest"), find("ours SmallestSize"));
    let (of, os) = (find("official q1"), find("official q11"));
    for (i, file) in files.iter().enumerate() {
        println!(
            "| {} | {:.3}x | {:.2}x | {:.3}x | {:.2}x |",
            file.name,
            fast[i].ratio() / of[i].ratio(),
            fast[i].compress_mbs() / of[i].compress_mbs(),
            small[i].ratio() / os[i].ratio(),
            small[i].compress_mbs() / os[i].compress_mbs()
        );
    }

    // What one payload costs inline: the basis of `Compression::offload_threshold`.
    println!("\n## Time to compress one payload of a size (µs; the executor is left above ~100 µs)\n");
    println!("| setting | 1 KiB | 4 KiB | 16 KiB | 64 KiB | offload threshold |");
    println!("|---|---|---|---|---|---|");
    let mut source = Vec::new();
    for m in &files[0].messages {
        source.extend_from_slice(m);
    }
    for c in [
        Compression::Fastest,
        Compression::SmallestSize,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
        Compression::Zstd { level: 9 },
        Compression::Zstd { level: 19 },
    ] {
        print!("| {c:?} |");
        for size in [1024, 4096, 16384, 65536] {
            let payload = &source[..size];
            let n = if quick { 3 } else { 11 };
            let times: Vec<f64> = (0..n)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(c.compress(payload));
                    start.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            print!(" {:.0} |", median(times));
        }
        println!(" {} |", c.offload_threshold());
    }
}
