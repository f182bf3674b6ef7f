fn main() {
    std::process::exit(engine_proxy::main());
}
