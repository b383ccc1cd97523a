//! EL1 runtime for the project's small Rust guests.
