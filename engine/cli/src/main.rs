use clap::Parser;

fn main() {
    // Output piped into `head` ends quietly, as for any Unix tool.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = engine_cli::Cli::parse();
    match engine_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("engine: {e:#}");
            std::process::exit(1);
        }
    }
}
