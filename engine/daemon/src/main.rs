fn main() -> anyhow::Result<()> {
    // `engined config default`: the configuration file of the defaults, as containerd's
    let args: Vec<String> = std::env::args().skip(1).take(3).collect();
    if args == ["config", "default"] {
        print!("{}", engine_daemon::config::default_file());
        return Ok(());
    }
    let config = engine_daemon::Config::from_args(std::env::args_os()).unwrap_or_else(|e| e.exit()).resolve()?;
    if config.validate {
        println!("configuration OK");
        return Ok(());
    }
    engine_daemon::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(engine_daemon::serve(config))
}
