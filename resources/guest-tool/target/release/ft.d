/work/main/resources/guest-tool/target/release/ft: /work/main/resources/guest-tool/src/main.rs
