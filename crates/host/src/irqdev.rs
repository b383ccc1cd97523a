//! The interrupt test device (guest `guest-irq`, issue 18 item 1): one
//! page of the host's MMIO window whose REQUEST register makes the host
//! raise the VM's SPI 40 with IRQ_LINE and whose ACK register lowers it.
//! Before the VM first runs the host declares that SPI (IRQ_DECLARE) and
//! tries the INTIDs the hypervisor must refuse; at the first request (the
//! VM has run) it tries a late declaration too. It prints what it got.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::demo::{IRQ_DEV_ACK, IRQ_DEV_IPA, IRQ_DEV_REQUEST, IRQ_DEV_SPI, IRQ_DEV_STATUS};
use guest_rt::println;
use hyp_abi::HostError;

use crate::hostif::{call, call_full};

/// The line's level as the host last set it.
static HIGH: AtomicBool = AtomicBool::new(false);
/// Raises whose targeted vCPU was not running (the host must run it) and
/// raises that found it running (kicked by the hypervisor).
static TO_IDLE: AtomicU64 = AtomicU64::new(0);
static TO_RUNNING: AtomicU64 = AtomicU64::new(0);
static LATE_CHECKED: AtomicBool = AtomicBool::new(false);

/// Whether `ipa` is the device's.
pub fn owns(ipa: u64) -> bool {
    ipa & !0xfff == IRQ_DEV_IPA
}

fn declare(h: u64, intid: u64) -> Result<u64, HostError> {
    call(hyp_abi::IRQ_DECLARE, [h, intid, 0, 0])
}

fn line(h: u64, intid: u64, level: u64) -> Result<u64, HostError> {
    let r = call_full(hyp_abi::IRQ_LINE, [h, intid, level, 0]);
    match HostError::from_code(r[0]) {
        Some(e) => Err(e),
        None => Ok(r[1]),
    }
}

/// Before VM `h` first runs: the refusals, then the declaration.
pub fn prepare(h: u64) {
    println!(
        "host: irq: before the run: declare SGI 1 {:?}, PPI 27 {:?}, PPI 23 {:?}, INTID 96 {:?}; \
         line of undeclared SPI {IRQ_DEV_SPI} {:?}",
        declare(h, 1),
        declare(h, 27),
        declare(h, 23),
        declare(h, 96),
        line(h, u64::from(IRQ_DEV_SPI), 1),
    );
    if let Err(e) = declare(h, u64::from(IRQ_DEV_SPI)) {
        crate::fail(format_args!("IRQ_DECLARE of SPI {IRQ_DEV_SPI}: {e:?}"));
    }
}

/// An access to the device by VM `h`; the value of a read.
pub fn mmio(h: u64, ipa: u64, write: bool, _value: u64) -> u64 {
    let spi = u64::from(IRQ_DEV_SPI);
    match (ipa - IRQ_DEV_IPA, write) {
        (IRQ_DEV_REQUEST, true) => {
            if !LATE_CHECKED.swap(true, Ordering::AcqRel) {
                println!(
                    "host: irq: after the run: declare SPI 41 {:?}; line of SPI {spi} at level 2 {:?}, \
                     of PPI 27 {:?}",
                    declare(h, 41),
                    line(h, spi, 2),
                    line(h, 27, 1),
                );
            }
            HIGH.store(true, Ordering::Release);
            match line(h, spi, 1) {
                Ok(0) => TO_RUNNING.fetch_add(1, Ordering::Relaxed),
                Ok(_) => TO_IDLE.fetch_add(1, Ordering::Relaxed),
                Err(e) => crate::fail(format_args!("IRQ_LINE raise: {e:?}")),
            };
            0
        }
        (IRQ_DEV_ACK, true) => {
            HIGH.store(false, Ordering::Release);
            if let Err(e) = line(h, spi, 0) {
                crate::fail(format_args!("IRQ_LINE lower: {e:?}"));
            }
            0
        }
        (IRQ_DEV_STATUS, false) => u64::from(HIGH.load(Ordering::Acquire)),
        _ => 0,
    }
}

/// What the raises found, for the end of the run.
pub fn report() {
    let (idle, running) = (
        TO_IDLE.load(Ordering::Relaxed),
        TO_RUNNING.load(Ordering::Relaxed),
    );
    if idle + running != 0 {
        println!(
            "host: irq: raised {} times: target not running {idle}, running (kicked) {running}",
            idle + running
        );
    }
}
