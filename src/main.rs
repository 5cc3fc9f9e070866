//! The `llmproxy` command: run the gateway from a config file, check a config, run the demo, or
//! run the simulated backend. Wires config, threads and signals; the work happens in the library.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use llmproxy::config::Config;
use llmproxy::gateway::{Gateway, Options};
use llmproxy::mock::{Flavor, MockOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for a bad config (EX_DATAERR-like, as in sysexits: EX_USAGE 64).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "llmproxy",
    version,
    about = "Thread-per-core io_uring gateway for LLM inference servers, with exact usage metering"
)]
struct Cli {
    /// Config file (TOML)
    #[arg(long, default_value = "config.toml", global = true)]
    config: PathBuf,
    /// Validate the config, print every problem found, exit 0 (valid) or 64
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print which I/O drivers this machine allows (io_uring needs a recent kernel and no seccomp block)
    Drivers,
    /// Run the gateway on 127.0.0.1:8080 in front of a built-in simulated backend, printing each
    /// usage record as a JSON line on stdout
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run the simulated OpenAI-compatible backend used by the demo, tests and benchmarks
    MockBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "vllm", value_parser = |s: &str| s.parse::<Flavor>())]
        flavor: Flavor,
        /// Time to first token
        #[arg(long, default_value_t = 20)]
        ttft_ms: u64,
        /// Gap between tokens
        #[arg(long, default_value_t = 10)]
        itl_ms: u64,
        /// Completion tokens per choice
        #[arg(long, default_value_t = 16)]
        tokens: u32,
        /// Model name to report (default: the flavour's usual model)
        #[arg(long, default_value = "")]
        model: String,
        /// Serve TLS with this PEM certificate chain (with --tls-key)
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<String>,
        /// The PEM private key of --tls-cert
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<String>,
        /// Require a client certificate signed by this PEM CA (mutual TLS)
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<String>,
        /// Gzip every answer whose request accepts gzip
        #[arg(long)]
        gzip: bool,
        /// Report cached and reasoning token details
        #[arg(long)]
        details: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    llmproxy::logging::init();
    let code = match cli.command {
        Some(Command::MockBackend {
            listen,
            flavor,
            ttft_ms,
            itl_ms,
            tokens,
            model,
            tls_cert,
            tls_key,
            tls_client_ca,
            gzip,
            details,
        }) => {
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => {
                    match llmproxy::mock::tls_front::server_config(&c, &k, tls_client_ca.as_deref()) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            log::error!("mock-backend: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                _ => None,
            };
            let opts = MockOptions {
                model: if model.is_empty() { flavor.default_model().to_string() } else { model },
                flavor,
                ttft: Duration::from_millis(ttft_ms),
                itl: Duration::from_millis(itl_ms),
                tokens,
                gzip,
                details,
            };
            match llmproxy::mock::run(listen, opts, tls) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("mock-backend: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Demo { listen }) => demo(listen),
        Some(Command::Drivers) => {
            let uring = monoio::utils::detect_uring();
            println!("io_uring: {}", if uring { "available" } else { "unavailable" });
            println!("epoll: available");
            println!("auto: {}", if uring { "io_uring" } else { "epoll" });
            ExitCode::SUCCESS
        }
        None if cli.check_config => check_config(&cli.config),
        None => run(&cli.config),
    };
    // The log thread writes what is still queued (for at most a moment if stderr is stalled).
    log::logger().flush();
    code
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!("{}: ok ({} backends, listen {})", path.display(), c.backends.len(), c.listen);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn load_or_exit(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load_or_exit(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    serve(config, Some(path.to_path_buf()), false)
}

/// Runs a gateway until SIGTERM/SIGINT, then drains and exits 0. SIGHUP reloads the config file;
/// SIGUSR1/SIGUSR2 are caught and ignored (their default action would kill the process).
fn serve(config: Config, config_path: Option<PathBuf>, echo_records: bool) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    // Every handler is installed before anything starts: tests and supervisors act on the first
    // log lines, and a SIGTERM sent while its handler was still being installed after start was
    // lost (the gateway then never drained) or killed the process without draining; a SIGHUP
    // must never kill the process. SIGUSR1/SIGUSR2 would terminate the process by default,
    // skipping the usage journal's final commit: catch them.
    let shutdown = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let ignored = Arc::new(AtomicBool::new(false));
    // The main thread sleeps on this self-pipe: each handler sets its flag, then writes a byte.
    let (wake, wake_tx) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            log::error!("cannot create the signal self-pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (sig, f, wakes) in [
        (SIGTERM, shutdown.clone(), true),
        (SIGINT, shutdown.clone(), true),
        (SIGHUP, reload.clone(), true),
        (SIGUSR1, ignored.clone(), false),
        (SIGUSR2, ignored, false),
    ] {
        let installed = signal_hook::flag::register(sig, f).and_then(|_| {
            if wakes {
                signal_hook::low_level::pipe::register(sig, wake_tx.try_clone()?)?;
            }
            Ok(())
        });
        if let Err(e) = installed {
            log::error!("cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    drop(wake_tx);
    let opts = Options { echo_records, config_path, reload, shutdown, wake: Some(wake) };
    let gw = match Gateway::start(config, opts) {
        Ok(g) => g,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    gw.run_until_shutdown();
    ExitCode::SUCCESS
}

fn demo(listen: SocketAddr) -> ExitCode {
    let backend_listener = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            log::error!("demo: cannot bind the simulated backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mock = llmproxy::mock::MockBackend::start(backend_listener, MockOptions::default());
    let spool = std::env::temp_dir().join(format!("llmproxy-demo-spool-{}", std::process::id()));
    let text = format!(
        "listen = \"{listen}\"\nshutdown_grace = \"2s\"\n[runtime]\nworkers = 1\npin_cores = false\n[[backends]]\nurl = \"{}\"\n[health_check]\ninterval = \"2s\"\n[usage_hook]\nenabled = false\nspool_dir = \"{}\"\n",
        mock.url(),
        spool.display()
    );
    let config = match Config::parse(&text, "demo") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "LLMProxy demo: gateway on http://{listen} in front of a simulated vLLM backend at {}",
        mock.url()
    );
    eprintln!("Usage records are printed below as JSON lines. Try, in another terminal:\n");
    eprintln!(
        "  curl -N http://{listen}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello there\"}}]}}'\n",
        mock.options().model
    );
    eprintln!("Stop with Ctrl-C.\n");
    let code = serve(config, None, true);
    drop(mock);
    code
}
