//! Virtual GICv3 and GICv2.
