//! Virtual GICv3 and GICv2.
#![no_std]
