use clap::Parser;

fn main() {
    let cli = engine_runtime::cli::Cli::parse();
    std::process::exit(engine_runtime::cli::main(cli));
}
