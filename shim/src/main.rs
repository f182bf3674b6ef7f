use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = engine_shim::Config::parse();
    // One thread: the shim exists once per container and must stay small.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the async runtime")?;
    rt.block_on(engine_shim::serve(config))
}
