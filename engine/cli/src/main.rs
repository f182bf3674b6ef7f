use clap::Parser;

fn main() {
    let cli = engine_cli::Cli::parse();
    match engine_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("engine: {e:#}");
            std::process::exit(1);
        }
    }
}
