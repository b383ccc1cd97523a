//! The metrics `cargo xtask profile` can ask guest-bench for: the one list
//! both sides use (guest-bench's profile mode takes an index into it, from
//! 1; xtask includes this file with `#[path]` to make that index and checks
//! the name the guest prints).

/// The profiled metrics, by index from 1. The first seven run in a
/// one-vCPU VM alone; `vtimer_latency` too (with the VM's GIC set up);
/// `vcpu_switch` needs the partner VM that yields (guest option
/// `arg=131`, iterations above); `sgi_latency` a VM with two vCPUs on two
/// physical CPUs.
pub const PROFILE_METRICS: [&str; 10] = [
    "hvc_null",
    "psci_version",
    "mmio_hyp",
    "mmio_host",
    "s2_fault",
    "mem_share_unshare",
    "hvc_unknown",
    "vtimer_latency",
    "vcpu_switch",
    "sgi_latency",
];
