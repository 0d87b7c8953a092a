//! Helpers shared by the examples: logging set up the same way in each.

/// Logs to standard error (colours only on a terminal), `warn` and the SDK's `info` by default;
/// `RUST_LOG` overrides.
pub fn init_logs() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,spotflow_device=info".into()),
        )
        .try_init();
}
