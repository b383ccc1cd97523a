//! Board descriptions (platforms/*/board.toml): parsing and build-time checks.
