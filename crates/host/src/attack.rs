//! The host as an attacker of its protected VMs (`attack=NAME`): each attack
//! prints what the hypervisor answered, and `tests/tests/hostile_host.rs`
//! checks it.

use crate::hostif::call;
use crate::many;
use guest_rt::println;
use hyp_abi::BootInfo;

/// Runs attack `name`.
pub fn run(info: &BootInfo, name: &str) {
    match name {
        "vcpu_init" => vcpu_init(info),
        _ => crate::fail(format_args!("unknown attack {name:?}")),
    }
}

/// Item 1: starting a protected VM's vCPUs where the host likes. The host
/// may set vCPU 0's entry once, before the VM runs; vCPU 1 (before the
/// guest started it, and after its CPU_OFF) and vCPU 0 again must be
/// Denied. guest-hello starts vCPU 1 itself and waits for it to go off.
fn vcpu_init(info: &BootInfo) {
    let (h, entry) = many::load(many::hello(info), true, 2);
    let early = call(hyp_abi::VCPU_INIT, [h, 1, entry, 0x666]);
    if let Err(e) = call(hyp_abi::VCPU_INIT, [h, 0, entry, h]) {
        crate::fail(format_args!(
            "attack vcpu_init: the one allowed VCPU_INIT: {e:?}"
        ));
    }
    let twice = call(hyp_abi::VCPU_INIT, [h, 0, entry, 0x666]);
    many::power_off(h, 2);
    let after_off = call(hyp_abi::VCPU_INIT, [h, 1, entry, 0x666]);
    println!(
        "host: attack vcpu_init: vCPU 1 before the guest started it: {early:?}; vCPU 0 a second time: {twice:?}; vCPU 1 after its CPU_OFF: {after_off:?}"
    );
    if let Err(e) = crate::hostif::destroy_vm(h) {
        crate::fail(format_args!("attack vcpu_init: VM_DESTROY: {e:?}"));
    }
}
