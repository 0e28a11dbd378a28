//! Generates the `hypervisor.Hypervisor` ttrpc service and its messages from
//! `proto/hypervisor.proto` (pure Rust: no `protoc` needed). The generated
//! files open with inner attributes and doc comments, which `include!`
//! cannot take: they are dropped here and `src/protocol.rs` sets the lints instead.

use std::fs;
use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=proto/hypervisor.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/hypervisor.proto"])
        .include("proto")
        .rust_protobuf()
        .run()
        .expect("generate the hypervisor.Hypervisor ttrpc code");
    for name in ["hypervisor.rs", "hypervisor_ttrpc.rs"] {
        let path = Path::new(&out).join(name);
        let text = fs::read_to_string(&path).expect("read the generated code");
        let kept: Vec<String> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("#!["))
            .map(|line| match line.strip_prefix("//!") {
                Some(rest) => format!("//{rest}"),
                None => line.to_string(),
            })
            .collect();
        fs::write(&path, kept.join("\n")).expect("write the generated code");
    }
}
