//! Compiles cri-api's runtime/v1/api.proto with protoc (Debian's protobuf-compiler, 3.21). The
//! proto marks the auth fields `[debug_redact = true]`, an option protoc learnt in 22: it only
//! changes how Go prints them, so the copy compiled here (under OUT_DIR) goes without it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    let text = std::fs::read_to_string("proto/runtime/v1/api.proto")?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("proto");
    std::fs::create_dir_all(out.join("runtime/v1"))?;
    std::fs::write(out.join("runtime/v1/api.proto"), text.replace(" [debug_redact = true]", ""))?;
    tonic_prost_build::configure().compile_protos(&[out.join("runtime/v1/api.proto")], &[out])?;
    Ok(())
}
