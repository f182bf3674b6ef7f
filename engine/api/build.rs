//! Compiles proto/engine.proto with protoc (Debian's protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/engine.proto");
    tonic_prost_build::configure().compile_protos(&["proto/engine.proto"], &["proto"])?;
    Ok(())
}
