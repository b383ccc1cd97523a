//! A guest that owns a physical device: the host assigns it QEMU virt's
//! PL031 real-time clock (`assign=rtc`, DEVICE_ASSIGN), so its registers are
//! mapped straight into this VM's stage 2 (no exits) and its interrupt
//! (SPI 34) reaches this VM through the hypervisor and the vGIC. Twice, the
//! guest sets the RTC's match register one second ahead, takes the alarm
//! interrupt, clears it at the device and ends it at the (virtual) GIC.
//! Checked by `tests/tests/guest_rtc.rs`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_rt::gic;
use guest_rt::{println, Exception, Frame};

/// PL031 registers (ARM PrimeCell RTC, DDI 0224): data, match, control,
/// interrupt mask set/clear, raw and masked status, clear.
const RTC: u64 = 0x0901_0000;
const RTCDR: u64 = 0x00;
const RTCMR: u64 = 0x04;
const RTCCR: u64 = 0x0c;
const RTCIMSC: u64 = 0x10;
const RTCRIS: u64 = 0x14;
const RTCICR: u64 = 0x1c;
/// The RTC's interrupt on QEMU virt: SPI 2.
const RTC_SPI: u32 = 34;
const ROUNDS: u32 = 2;

static TAKEN: AtomicU32 = AtomicU32::new(0);
static OTHER: AtomicU32 = AtomicU32::new(0);

fn rtc_read(off: u64) -> u32 {
    let v: u32;
    // SAFETY: the PL031's registers, mapped into this VM as device memory.
    unsafe {
        core::arch::asm!("ldr {0:w}, [{1}]", out(reg) v, in(reg) RTC + off, options(nostack))
    };
    v
}

fn rtc_write(off: u64, v: u32) {
    // SAFETY: as `rtc_read`.
    unsafe { core::arch::asm!("str {0:w}, [{1}]", in(reg) v, in(reg) RTC + off, options(nostack)) };
}

fn irq(e: &Exception, _frame: &mut Frame) -> bool {
    if e.vector != 5 {
        return false;
    }
    let a = gic::ack();
    if a.intid() == RTC_SPI {
        // Clear at the device first: the line is level-sensitive.
        rtc_write(RTCICR, 1);
        TAKEN.fetch_add(1, Ordering::Relaxed);
    } else {
        OTHER.fetch_add(1, Ordering::Relaxed);
    }
    gic::eoi(a);
    true
}

#[unsafe(no_mangle)]
fn guest_main(c: usize, _arg: u64) -> ! {
    if c != 0 {
        guest_rt::cpu_off();
    }
    guest_rt::set_exception_hook(irq);
    gic::irq_mask();
    gic::init_distributor();
    gic::init_cpu();
    gic::configure_spi(RTC_SPI, false);
    gic::route_spi(RTC_SPI, gic::affinity());
    gic::set_priority(RTC_SPI, 0x80);
    gic::enable(RTC_SPI);
    rtc_write(RTCCR, 1);
    gic::irq_unmask();
    println!("guest-rtc: PL031 at {RTC:#x} mapped in, its interrupt is SPI {RTC_SPI}");
    for round in 1..=ROUNDS {
        rtc_write(RTCICR, 1);
        let now = rtc_read(RTCDR);
        rtc_write(RTCMR, now.wrapping_add(1));
        rtc_write(RTCIMSC, 1);
        if !gic::wait_until(5000, || TAKEN.load(Ordering::Relaxed) >= round) {
            println!(
                "guest-rtc: alarm {round} never arrived (RIS = {})",
                rtc_read(RTCRIS)
            );
            guest_rt::system_off();
        }
        println!("guest-rtc: alarm {round} taken through the vGIC");
    }
    rtc_write(RTCIMSC, 0);
    println!(
        "guest-rtc: {} alarms, {} other interrupts, RIS after clearing = {}",
        TAKEN.load(Ordering::Relaxed),
        OTHER.load(Ordering::Relaxed),
        rtc_read(RTCRIS)
    );
    println!("guest-rtc: done, powering off");
    guest_rt::system_off()
}
