fn main() {
    let opts = match engine_init::parse_args(std::env::args_os()) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    match engine_init::run(&opts) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("engine-init: {e}");
            std::process::exit(1);
        }
    }
}
