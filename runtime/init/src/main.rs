fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == engine_init::HANDOFF_FLAG) {
        // the runtime's hand-over: record init.exec and become the user's program
        let code = engine_init::handoff(&args[2..]);
        std::process::exit(code);
    }
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
