//! Guest reads of ID registers trapped by HCR_EL2.TID3: the hardware value,
//! sanitised so guests do not see features the hypervisor does not
//! virtualise.

use crate::arch::sysreg;
use crate::exit::SysRegEnc;

/// The value a guest reads from ID register `e` (op0 = 3, op1 = 0, CRn = 0).
pub fn read(e: SysRegEnc) -> u64 {
    crate::idregs::sanitise(e, sysreg::read_id(e.crm, e.op2)).unwrap_or(0)
}
