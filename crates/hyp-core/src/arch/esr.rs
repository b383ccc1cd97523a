//! Decoding why a guest exited: ESR_EL2 exception classes and their syndromes.
//!
//! Pure functions over register values, so every decoding rule is tested on
//! the host. Field layouts follow Arm ARM DDI 0487 D24.2.40 (ESR_EL2) and the
//! ISS encodings of sections D24.2.40.x.

use aarch64_cpu::registers::ESR_EL2;

/// ESR_EL2.EC values the hypervisor handles (Arm ARM D24.2.40, "EC"), from
/// `aarch64-cpu`'s `ESR_EL2::EC` values.
pub mod ec {
    use aarch64_cpu::registers::ESR_EL2::EC::Value;

    /// Unknown reason: injected back as UNDEF.
    pub const UNKNOWN: u8 = Value::Unknown as u8;
    /// WFI or WFE trapped by HCR_EL2.TWI/TWE.
    pub const WFX: u8 = Value::TrappedWFIorWFE as u8;
    /// FP/SIMD access trapped by CPTR_EL2.TFP.
    pub const FP_ASIMD: u8 = Value::TrappedFP as u8;
    /// SVE access trapped by CPTR_EL2.TZ (0x19; `aarch64-cpu` 11.2 has no
    /// name for it).
    pub const SVE: u8 = 0x19;
    /// HVC from AArch64 state.
    pub const HVC64: u8 = Value::HVC64 as u8;
    /// SMC from AArch64 state trapped by HCR_EL2.TSC.
    pub const SMC64: u8 = Value::SMC64 as u8;
    /// MSR/MRS/system instruction trapped.
    pub const SYS64: u8 = Value::TrappedMsrMrs as u8;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOW: u8 = Value::InstrAbortLowerEL as u8;
    /// Instruction abort taken without a change of exception level (used when injecting).
    pub const IABT_CUR: u8 = Value::InstrAbortCurrentEL as u8;
    /// Data abort from a lower exception level.
    pub const DABT_LOW: u8 = Value::DataAbortLowerEL as u8;
    /// Data abort taken without a change of exception level (used when injecting).
    pub const DABT_CUR: u8 = Value::DataAbortCurrentEL as u8;
}

// Local: `aarch64-cpu` 11.2 describes ESR_EL2.ISS only as one 25-bit field,
// with no per-class layout (the same holds for the MSR/MRS layout that
// `decode_sysreg` reads).
/// ISS fields of a data abort (EC 0x24/0x25, Arm ARM D24.2.40.11).
pub mod dabt {
    /// ISV: the syndrome below (SAS, SSE, SRT, SF) is valid.
    pub const ISV: u32 = 1 << 24;
    /// SAS, bits \[23:22\]: log2 of the access size in bytes.
    pub const SAS_SHIFT: u32 = 22;
    /// SSE: sign-extend the load.
    pub const SSE: u32 = 1 << 21;
    /// SRT, bits \[20:16\]: the register transferred.
    pub const SRT_SHIFT: u32 = 16;
    /// SF: the register is 64 bits wide.
    pub const SF: u32 = 1 << 15;
    /// S1PTW: the fault was on a stage-1 table walk.
    pub const S1PTW: u32 = 1 << 7;
    /// WnR: a write.
    pub const WNR: u32 = 1 << 6;
}

/// A raw ESR_EL2 value with accessors for its common fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception class (ESR_EL2.EC).
    #[must_use]
    pub const fn ec(self) -> u8 {
        ((self.0 >> ESR_EL2::EC.shift) & ESR_EL2::EC.mask) as u8
    }
    /// Instruction length bit (ESR_EL2.IL: 1 = 32-bit instruction).
    #[must_use]
    pub const fn il(self) -> bool {
        self.0 & ESR_EL2::IL::SET.value != 0
    }
    /// Length in bytes of the trapped instruction, which the PC steps over:
    /// 4, or 2 for a 16-bit Thumb instruction (IL = 0).
    #[must_use]
    pub const fn insn_len(self) -> u64 {
        2 << self.il() as u64
    }
    /// Instruction-specific syndrome (ESR_EL2.ISS).
    #[must_use]
    pub const fn iss(self) -> u32 {
        ((self.0 >> ESR_EL2::ISS.shift) & ESR_EL2::ISS.mask) as u32
    }
}

/// Access size of a data abort, from ISS.SAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessSize {
    /// 8 bits.
    Byte = 1,
    /// 16 bits.
    Half = 2,
    /// 32 bits.
    Word = 4,
    /// 64 bits.
    Double = 8,
}

impl AccessSize {
    /// Size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        self as u64
    }
}

/// A decoded MMIO access from a data abort whose syndrome is valid (ISV=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// Faulting intermediate physical address.
    pub ipa: u64,
    /// Access size.
    pub size: AccessSize,
    /// Sign-extend a load (ISS.SSE).
    pub sign_extend: bool,
    /// Register transferred (ISS.SRT); 31 means XZR.
    pub reg: u8,
    /// 64-bit destination register (ISS.SF).
    pub sixty_four: bool,
    /// Write (ISS.WnR).
    pub write: bool,
}

impl MmioAccess {
    /// Value to place in the destination register for a load that read `raw`
    /// (the low `size` bytes are significant), honouring SSE and SF.
    #[must_use]
    #[inline]
    pub fn load_result(&self, raw: u64) -> u64 {
        // The access's bytes moved to the top, then back down with the sign
        // (SSE) or zeros: one shift pair for every size (a shift of 0 for a
        // 64-bit access, which has nothing to extend).
        let shift = 64 - self.size.bytes() * 8;
        let top = raw << shift;
        let extended = if self.sign_extend {
            ((top as i64) >> shift) as u64
        } else {
            top >> shift
        };
        if self.sixty_four {
            extended
        } else {
            extended & 0xffff_ffff
        }
    }
}

/// What a data abort from a guest means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAbort {
    /// A syndrome-valid access the hypervisor can emulate.
    Mmio(MmioAccess),
    /// No valid instruction syndrome (ISV=0: e.g. load pair, writeback): the
    /// hypervisor cannot emulate it and injects an abort.
    NoSyndrome {
        /// Faulting IPA.
        ipa: u64,
        /// Write (WnR), as far as the syndrome tells.
        write: bool,
    },
    /// A fault on the stage-1 page-table walk (S1PTW): the guest's tables lie
    /// outside its memory.
    Stage1Walk {
        /// Faulting IPA.
        ipa: u64,
    },
}

/// Fault IPA from HPFAR_EL2 (FIPA, bits [43:4] = IPA[51:12]) and FAR_EL2 (page offset).
#[must_use]
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) & 0xff_ffff_ffff) << 12 | (far & 0xfff)
}

/// Decodes a data abort from a lower EL (EC 0x24).
#[must_use]
pub fn decode_data_abort(esr: Esr, hpfar: u64, far: u64) -> DataAbort {
    let iss = esr.iss();
    let ipa = fault_ipa(hpfar, far);
    let write = iss & dabt::WNR != 0;
    if iss & dabt::S1PTW != 0 {
        return DataAbort::Stage1Walk { ipa };
    }
    if iss & dabt::ISV == 0 {
        return DataAbort::NoSyndrome { ipa, write };
    }
    DataAbort::Mmio(access(iss, ipa))
}

/// A data abort (EC 0x24) at `ipa` that is a load with a valid syndrome,
/// told by one test of its ISS (ISV = 1, S1PTW = 0, WnR = 0): what
/// [`decode_data_abort`] decodes as a `DataAbort::Mmio` read, for the
/// vector's fast path, which emulates loads only. None for anything else.
#[must_use]
#[inline]
pub fn syndrome_load(esr: Esr, ipa: u64) -> Option<MmioAccess> {
    let iss = esr.iss();
    if iss & (dabt::ISV | dabt::S1PTW | dabt::WNR) == dabt::ISV {
        Some(access(iss, ipa))
    } else {
        None
    }
}

/// The access a valid data-abort syndrome `iss` (ISV = 1) describes.
#[inline(always)]
fn access(iss: u32, ipa: u64) -> MmioAccess {
    let size = match (iss >> dabt::SAS_SHIFT) & 3 {
        0 => AccessSize::Byte,
        1 => AccessSize::Half,
        2 => AccessSize::Word,
        _ => AccessSize::Double,
    };
    MmioAccess {
        ipa,
        size,
        sign_extend: iss & dabt::SSE != 0,
        reg: ((iss >> dabt::SRT_SHIFT) & 0x1f) as u8,
        sixty_four: iss & dabt::SF != 0,
        write: iss & dabt::WNR != 0,
    }
}

/// A trapped MSR/MRS (EC 0x18), ISS layout of Arm ARM D24.2.40.18 (its
/// shifts are local for the reason given at [`dabt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    /// Encoding (op0, op1, CRn, CRm, op2).
    pub enc: SysRegEnc,
    /// General-purpose register Rt.
    pub reg: u8,
    /// MRS (read) rather than MSR (write).
    pub read: bool,
}

/// A system-register encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegEnc {
    /// op0.
    pub op0: u8,
    /// op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// op2.
    pub op2: u8,
}

impl SysRegEnc {
    /// Builds an encoding.
    #[must_use]
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

/// Decodes the ISS of a trapped system-register access.
#[must_use]
pub const fn decode_sysreg(esr: Esr) -> SysRegAccess {
    let iss = esr.iss();
    SysRegAccess {
        enc: SysRegEnc {
            op0: ((iss >> 20) & 3) as u8,
            op2: ((iss >> 17) & 7) as u8,
            op1: ((iss >> 14) & 7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
        },
        reg: ((iss >> 5) & 0x1f) as u8,
        read: iss & 1 != 0,
    }
}

/// Why a guest stopped running, as counted in the exit statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ExitReason {
    /// HVC call.
    Hvc = 0,
    /// Trapped SMC call.
    Smc,
    /// Data abort (MMIO or fault).
    DataAbort,
    /// Instruction abort.
    InstAbort,
    /// Trapped system-register access.
    SysReg,
    /// WFI/WFE.
    Wfx,
    /// FP/SIMD trap.
    Fp,
    /// Physical IRQ taken at EL2.
    Irq,
    /// Anything else (injected as UNDEF).
    Other,
}

impl ExitReason {
    /// Number of reasons.
    pub const COUNT: usize = 9;
    /// All reasons in counter order.
    pub const ALL: [ExitReason; Self::COUNT] = [
        Self::Hvc,
        Self::Smc,
        Self::DataAbort,
        Self::InstAbort,
        Self::SysReg,
        Self::Wfx,
        Self::Fp,
        Self::Irq,
        Self::Other,
    ];
    /// Name printed in the `hyp: exits` line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hvc => "hvc",
            Self::Smc => "smc",
            Self::DataAbort => "dabt",
            Self::InstAbort => "iabt",
            Self::SysReg => "sysreg",
            Self::Wfx => "wfx",
            Self::Fp => "fp",
            Self::Irq => "irq",
            Self::Other => "other",
        }
    }
    /// Classifies a synchronous exit by its exception class.
    #[must_use]
    pub const fn from_ec(ec_value: u8) -> Self {
        match ec_value {
            ec::HVC64 => Self::Hvc,
            ec::SMC64 => Self::Smc,
            ec::DABT_LOW => Self::DataAbort,
            ec::IABT_LOW => Self::InstAbort,
            ec::SYS64 => Self::SysReg,
            ec::WFX => Self::Wfx,
            ec::FP_ASIMD | ec::SVE => Self::Fp,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dabt_iss(isv: bool, sas: u32, sse: bool, srt: u32, sf: bool, wnr: bool) -> Esr {
        let iss = (u32::from(isv) << 24)
            | (sas << 22)
            | (u32::from(sse) << 21)
            | (srt << 16)
            | (u32::from(sf) << 15)
            | (u32::from(wnr) << 6);
        Esr((u64::from(ec::DABT_LOW) << 26) | (1 << 25) | u64::from(iss))
    }

    /// The constants taken from `aarch64-cpu` are the values they replace.
    #[test]
    fn field_values_unchanged() {
        assert_eq!(
            [
                ec::UNKNOWN,
                ec::WFX,
                ec::FP_ASIMD,
                ec::HVC64,
                ec::SMC64,
                ec::SYS64,
                ec::IABT_LOW,
                ec::IABT_CUR,
                ec::DABT_LOW,
                ec::DABT_CUR
            ],
            [0x00, 0x01, 0x07, 0x16, 0x17, 0x18, 0x20, 0x21, 0x24, 0x25]
        );
        let e = Esr(u64::MAX);
        assert_eq!((e.ec(), e.il(), e.iss()), (0x3f, true, 0x1ff_ffff));
        let e = Esr(!(1 << 25));
        assert_eq!((e.ec(), e.il(), e.iss()), (0x3f, false, 0x1ff_ffff));
    }

    #[test]
    fn esr_fields() {
        let e = Esr(0x5a00_0000 | 0x1234);
        assert_eq!(e.ec(), 0x16);
        assert_eq!(e.iss(), 0x1234);
        assert_eq!(e.insn_len(), 4, "IL set: a 32-bit instruction");
        assert_eq!(Esr(0x5800_0000).insn_len(), 2, "IL clear: 16-bit Thumb");
    }

    #[test]
    fn fault_ipa_combines_hpfar_and_far() {
        // HPFAR.FIPA holds IPA[51:12] in bits [43:4].
        assert_eq!(
            fault_ipa(0x0900_0000 >> 8, 0xffff_0000_0000_0018),
            0x0900_0018
        );
        assert_eq!(
            fault_ipa((0x12_3456_7000u64 >> 12) << 4, 0xabc),
            0x12_3456_7abc
        );
    }

    #[test]
    fn data_abort_all_sizes_and_directions() {
        for sas in 0..4u32 {
            for wnr in [false, true] {
                let d = decode_data_abort(dabt_iss(true, sas, false, 3, true, wnr), 0x90000, 4);
                let DataAbort::Mmio(m) = d else {
                    panic!("expected MMIO, got {d:?}")
                };
                assert_eq!(m.size.bytes(), 1 << sas);
                assert_eq!(m.write, wnr);
                assert_eq!(m.reg, 3);
                assert_eq!(m.ipa, 0x0900_0004);
            }
        }
    }

    #[test]
    fn no_syndrome_and_s1ptw() {
        let d = decode_data_abort(dabt_iss(false, 0, false, 0, false, true), 0x10, 0);
        assert_eq!(
            d,
            DataAbort::NoSyndrome {
                ipa: 0x1000,
                write: true
            }
        );
        let e = Esr(dabt_iss(true, 2, false, 0, false, false).0 | (1 << 7));
        assert_eq!(
            decode_data_abort(e, 0x10, 0),
            DataAbort::Stage1Walk { ipa: 0x1000 }
        );
    }

    /// `syndrome_load` is `decode_data_abort`'s syndrome-valid read, and
    /// nothing else: every ISV, SAS, SSE, SRT, SF, S1PTW and WnR value.
    #[test]
    fn syndrome_load_is_the_decoded_read() {
        for bits in 0..1u32 << 12 {
            // ISS[24:15] from bits[9:0], S1PTW (7) and WnR (6) from bits[11:10].
            let iss = ((bits & 0x3ff) << 15) | ((bits >> 10) & 3) << 6;
            let e = Esr((u64::from(ec::DABT_LOW) << 26) | u64::from(iss));
            let decoded = match decode_data_abort(e, 0x10, 0x234) {
                DataAbort::Mmio(m) if !m.write => Some(m),
                _ => None,
            };
            assert_eq!(syndrome_load(e, 0x1234), decoded, "ISS {iss:#x}");
        }
    }

    #[test]
    fn load_sign_extension() {
        let m = |size, sse, sf| MmioAccess {
            ipa: 0,
            size,
            sign_extend: sse,
            reg: 0,
            sixty_four: sf,
            write: false,
        };
        assert_eq!(
            m(AccessSize::Byte, true, true).load_result(0x80),
            0xffff_ffff_ffff_ff80
        );
        assert_eq!(
            m(AccessSize::Byte, true, false).load_result(0x80),
            0xffff_ff80
        );
        assert_eq!(m(AccessSize::Byte, false, true).load_result(0x1_80), 0x80);
        assert_eq!(m(AccessSize::Half, true, true).load_result(0x7fff), 0x7fff);
        assert_eq!(
            m(AccessSize::Half, true, true).load_result(0x8000),
            0xffff_ffff_ffff_8000
        );
        assert_eq!(
            m(AccessSize::Word, true, true).load_result(0x8000_0000),
            0xffff_ffff_8000_0000
        );
        assert_eq!(
            m(AccessSize::Word, false, false).load_result(0xdead_beef_8000_0000),
            0x8000_0000
        );
        assert_eq!(
            m(AccessSize::Double, true, true).load_result(u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn sysreg_decoding() {
        // MRS x5, ID_AA64PFR0_EL1 = op0 3, op1 0, CRn 0, CRm 4, op2 0.
        let iss: u64 = (3 << 20) | (4 << 1) | (5 << 5) | 1;
        let a = decode_sysreg(Esr((0x18 << 26) | iss));
        assert_eq!(a.enc, SysRegEnc::new(3, 0, 0, 4, 0));
        assert_eq!(a.reg, 5);
        assert!(a.read);
        // MSR SCTLR_EL1, x2 = 3,0,1,0,0.
        let iss: u64 = (3 << 20) | (1 << 10) | (2 << 5);
        let a = decode_sysreg(Esr((0x18 << 26) | iss));
        assert_eq!(a.enc, SysRegEnc::new(3, 0, 1, 0, 0));
        assert!(!a.read);
    }

    #[test]
    fn exit_reason_names_unique() {
        for (i, a) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            for b in &ExitReason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
