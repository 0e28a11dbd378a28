/work/main/resources/guest-tool/target/release/deps/ft-da65db572ea27505.d: src/main.rs Cargo.toml

/work/main/resources/guest-tool/target/release/deps/libft-da65db572ea27505.rmeta: src/main.rs Cargo.toml

src/main.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=
# env-dep:CLIPPY_CONF_DIR
