use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // A vendored protoc, so the build needs nothing installed.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        #[allow(
            unsafe_code,
            reason = "build scripts are single-threaded; prost-build reads PROTOC from the environment"
        )]
        // SAFETY: no other thread exists in this build script.
        unsafe {
            std::env::set_var("PROTOC", protoc);
        }
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        root.join("mskflow/intake/v1/intake.proto"),
        root.join("mskflow/assessment/v1/assessment.proto"),
        root.join("mskflow/scheduling/v1/scheduling.proto"),
        root.join("mskflow/outcomes/v1/outcomes.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mskflow_descriptor.bin"))
        .compile_protos(&protos, &[root])?;
    Ok(())
}
