//! Compiles our google.pubsub.v1 subset (proto/) into Rust for the emulator.
//! `protox` parses the .proto files in pure Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["google/pubsub/v1/pubsub.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `Bytes` so a message fanned out to many subscriptions shares one buffer.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
