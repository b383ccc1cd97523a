//! Typed AArch64 system-register writes with synchronisation proofs, and page-table barrier batching.
