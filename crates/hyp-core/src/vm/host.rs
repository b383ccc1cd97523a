//! The host VM's vCPUs: one per physical CPU, powered on and off by the
//! host's own PSCI calls (the boot CPU's at boot).

use crate::vm::control::psci;
use crate::vm::control::MAX_VCPUS;
use core::sync::atomic::{AtomicU8, Ordering};
use smccc::psci::error;
use spin::Mutex;

const OFF: u8 = 0;
/// CPU_ON claimed the vCPU; its entry is being recorded.
const CLAIMED: u8 = 1;
const ON_PENDING: u8 = 2;
const ON: u8 = 3;
static HOST_POWER: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(OFF) }; MAX_VCPUS];
static HOST_BOOT: [Mutex<(u64, u64)>; MAX_VCPUS] = [const { Mutex::new((0, 0)) }; MAX_VCPUS];

/// Powers on host vCPU `cpu` at `entry` with `x0`.
pub fn start(cpu: usize, entry: u64, x0: u64) {
    *HOST_BOOT[cpu].lock() = (entry, x0);
    HOST_POWER[cpu].store(ON_PENDING, Ordering::Release);
    barriers::maint::publish_and_wake();
}

/// On physical CPU `cpu`: waits until its host vCPU is powered on, marks it
/// on, and returns its entry and x0.
pub fn wait_for_power_on(cpu: usize) -> (u64, u64) {
    while HOST_POWER[cpu].load(Ordering::Acquire) != ON_PENDING {
        crate::arch::sysreg::wfe();
    }
    let boot = *HOST_BOOT[cpu].lock();
    HOST_POWER[cpu].store(ON, Ordering::Release);
    boot
}

/// Host vCPU `cpu` turned itself off.
pub fn powered_off(cpu: usize) {
    HOST_POWER[cpu].store(OFF, Ordering::Release);
}

/// The host's PSCI CPU_ON of its vCPU `cpu`: the PSCI return code (x0).
pub fn cpu_on(cpu: usize, entry: u64, context: u64) -> u64 {
    match HOST_POWER[cpu].compare_exchange(OFF, CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            start(cpu, entry, context);
            0
        }
        Err(ON) => psci(error::ALREADY_ON),
        Err(_) => psci(error::ON_PENDING),
    }
}

/// The host's PSCI AFFINITY_INFO of its vCPU `cpu`: 0 on, 1 off, 2 on pending.
pub fn affinity_info(cpu: usize) -> u64 {
    match HOST_POWER[cpu].load(Ordering::Acquire) {
        ON => 0,
        OFF => 1,
        _ => 2,
    }
}
