//! Compiles `proto/` into Rust with a pure-Rust proto compiler (protox), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tilebox/v1/id.proto",
        "proto/tilebox/v1/query.proto",
        "proto/workflows/v1/core.proto",
        "proto/workflows/v1/job.proto",
        "proto/workflows/v1/task.proto",
        "proto/workflows/v1/workflows.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
