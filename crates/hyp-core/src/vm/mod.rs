//! VMs: the control state ([`control`]: the VM table, vCPU power and run
//! claims, page ownership through `s2mm`) and the emulated console
//! ([`uart`], its receive side [`uart_rx`]); at EL2, the state behind them
//! (`state`), console input for the focused VM (`console_in`), assigned
//! devices (`devices`), the host's own vCPUs (`host`) and its PCIe INTx
//! lines ([`host_intx`]).

pub mod control;
pub mod host_intx;
pub mod memcache;
pub mod uart;
pub mod uart_rx;

#[cfg(target_arch = "aarch64")]
pub mod console_in;
#[cfg(target_arch = "aarch64")]
pub mod devices;
#[cfg(target_arch = "aarch64")]
pub mod host;
#[cfg(target_arch = "aarch64")]
pub mod state;
