/work/main/resources/guest-tool/target/release/deps/ft-b5334be8a910cd61.d: src/main.rs

/work/main/resources/guest-tool/target/release/deps/ft-b5334be8a910cd61: src/main.rs

src/main.rs:
