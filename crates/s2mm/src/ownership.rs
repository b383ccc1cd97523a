//! Page ownership transitions (placeholder).
