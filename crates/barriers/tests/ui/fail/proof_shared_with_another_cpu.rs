// Rule: proofs are per CPU, so they are not `Sync` either: a shared reference used on another
// CPU proves nothing about that CPU's registers.
// Source: Arm ARM D24.1.2.2 (context synchronisation is per PE); issue "barriers" bullet 4.
// API: IccSreEl2::write(
use barriers::regs::IccSreEl2;

fn shared_between_cpus<T: Sync>(_: &T) {}

fn main() {
    // SAFETY: compile test.
    let sre = barriers::isb(unsafe { IccSreEl2::write(0b1001) });
    shared_between_cpus(&sre);
}
