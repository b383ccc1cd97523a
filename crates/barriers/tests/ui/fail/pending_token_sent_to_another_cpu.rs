// Rule: a pending write belongs to the CPU that made it: an ISB or ERET on another CPU does
// not synchronise it.
// Source: Arm ARM D24.1.2.2; issue "barriers" bullet 4.
// API: VmpidrEl2::write(
use barriers::regs::VmpidrEl2;

fn main() {
    let t = VmpidrEl2::write(1 << 31);
    std::thread::spawn(move || {
        let _ = barriers::isb(t);
    });
}
