//! The fuzz targets' checks, one function per target (see `checks.rs`). The same file is
//! included by `tests/fuzz_corpus.rs`, which replays `fuzz/corpus/` in the normal suite.

mod checks;

pub use checks::*;
