use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = engine_daemon::Config::parse().resolve()?;
    engine_daemon::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(engine_daemon::serve(config))
}
