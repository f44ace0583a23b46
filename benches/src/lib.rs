//! criterion benches for Tidemark's hot paths live in `benches/`; run them with
//! `cargo bench -p tidemark-benches` (see README.md, "Benchmarks").
