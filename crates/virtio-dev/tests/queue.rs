//! Malformed queues and a misbehaving driver, fed to a block device through the fake memory:
//! each case checks what the device did (broken or request failed), what it wrote, and
//! that it touched no memory it should not.

mod common;

use common::*;
use virtio_dev::blk::{Block, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_dev::transport::reg;
use virtio_dev::{ChainDefect, DeviceStatus, Error, Fault, Feature, MmioTransport, MAX_DESC_LEN};

const N: u16 = 8;
const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x3000;

fn blk(mem: &FakeMem) -> MmioTransport<Block<RamDisk>> {
    let mut t = MmioTransport::new(Block::new(RamDisk::new(64)), false);
    start(&mut t, mem, 1, u32::from(N));
    t
}

fn header(mem: &FakeMem, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.put(HDR, &h);
}

/// A well-formed one-sector read request in descriptors 0..3.
fn good_read(mem: &FakeMem) {
    header(mem, VIRTIO_BLK_T_IN, 1);
    mem.put(STATUS, &[0xff]);
    chain(
        mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
}

/// The device is broken with `e`, wrote nothing to the used ring, and serves nothing more.
fn assert_broken(t: &mut MmioTransport<Block<RamDisk>>, mem: &FakeMem, e: Error) {
    assert!(t.is_broken());
    assert!(needs_reset(t));
    assert!(t.interrupt_pending());
    assert_eq!(t.take_error(), Some(e));
    assert_eq!(used_idx(mem, 0), 0);
    assert!(mem.log().iter().all(|a| !a.write), "{:?}", mem.log());
}

#[test]
fn descriptor_index_out_of_range_breaks_the_device() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    desc(&mem, 0, 0, HDR, 16, NEXT, N); // next = N: one past the table
    offer(&mem, 0, N, 0);
    assert!(notify(&mut t, &mem, 0));
    assert_broken(&mut t, &mem, Error::DescIndex { queue: 0, index: N });
    assert_eq!(table_reads(&mem), [desc_area(0)], "descriptor 0 only");
    // The head itself out of range: no descriptor read at all.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    offer(&mem, 0, N, 0xffff);
    notify(&mut t, &mem, 0);
    assert_broken(
        &mut t,
        &mem,
        Error::DescIndex {
            queue: 0,
            index: 0xffff,
        },
    );
    assert_eq!(table_reads(&mem), []);
}

/// Addresses of the reads in queue 0's descriptor area.
fn table_reads(mem: &FakeMem) -> Vec<u64> {
    let area = desc_area(0)..avail_area(0);
    mem.log()
        .iter()
        .filter(|a| area.contains(&a.ipa))
        .map(|a| a.ipa)
        .collect()
}

#[test]
fn a_descriptor_loop_breaks_the_device_after_at_most_size_descriptors() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    desc(&mem, 0, 0, HDR, 16, NEXT, 1);
    desc(&mem, 0, 1, DATA, 512, NEXT | WRITE, 0); // back to 0
    offer(&mem, 0, N, 0);
    notify(&mut t, &mem, 0);
    assert_eq!(
        table_reads(&mem).len(),
        usize::from(N),
        "one read per descriptor up to the queue size"
    );
    assert_broken(&mut t, &mem, Error::ChainTooLong { queue: 0 });
}

#[test]
fn a_chain_through_every_descriptor_is_fine_one_more_is_too_long() {
    // Exactly N descriptors: header, N-2 data sectors, status.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let mut bufs = vec![(HDR, 16, false)];
    for k in 0..u64::from(N) - 2 {
        bufs.push((DATA + 512 * k, 512, true));
    }
    bufs.push((STATUS, 1, true));
    chain(&mem, 0, N, 0, &bufs);
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(mem.get(STATUS, 1), [0]);
    assert_eq!(used(&mem, 0, N, 0), (0, 512 * (u32::from(N) - 2) + 1));
    // The same chain, its last descriptor pointing back at the first: longer than the queue.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    chain(&mem, 0, N, 0, &bufs);
    desc(&mem, 0, N - 1, STATUS, 1, WRITE | NEXT, 0);
    notify(&mut t, &mem, 0);
    assert_broken(&mut t, &mem, Error::ChainTooLong { queue: 0 });
}

#[test]
fn avail_idx_more_than_the_queue_size_ahead_breaks_the_device() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    mem.put16(avail_area(0) + 2, N + 1);
    notify(&mut t, &mem, 0);
    assert_broken(
        &mut t,
        &mem,
        Error::AvailIdx {
            queue: 0,
            idx: N + 1,
            last: 0,
        },
    );
    // Exactly N ahead is a full ring: served. Four flush chains of two descriptors, each
    // offered twice.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, virtio_dev::blk::VIRTIO_BLK_T_FLUSH, 0);
    for k in 0..N / 2 {
        chain(
            &mem,
            0,
            N,
            2 * k,
            &[(HDR, 16, false), (STATUS + u64::from(k), 1, true)],
        );
    }
    for k in 0..N / 2 {
        offer(&mem, 0, N, 2 * k);
    }
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(used_idx(&mem, 0), N);
    assert_eq!(t.device().backend().flushes, usize::from(N));
}

#[test]
fn zero_length_buffer_fails_the_request_with_ioerr() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    mem.put(STATUS, &[0xff]);
    chain(
        &mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 0, true), (STATUS, 1, true)],
    );
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
    assert_eq!(used(&mem, 0, N, 0), (0, 0));
    assert_eq!(
        t.take_error(),
        Some(Error::Chain {
            queue: 0,
            defect: ChainDefect::ZeroLength
        })
    );
    // Neither the header nor the data was touched: only the status byte.
    let buffers: Vec<_> = mem.log().into_iter().filter(|a| a.ipa >= BUF).collect();
    assert_eq!(
        buffers,
        [Access {
            write: true,
            ipa: STATUS,
            len: 1
        }]
    );
}

#[test]
fn huge_buffers_fail_the_request_without_touching_them() {
    // One huge descriptor; one just over the limit; 17 at the limit (over the chain limit).
    for (len, more) in [(u32::MAX, 0), (MAX_DESC_LEN + 1, 0), (MAX_DESC_LEN, 16)] {
        let mem = FakeMem::new();
        let mut t = MmioTransport::new(Block::new(RamDisk::new(64)), false);
        start(&mut t, &mem, 1, 32);
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let mut bufs = vec![(HDR, 16, false), (DATA, len, true)];
        bufs.extend(std::iter::repeat_n((DATA, len, true), more));
        bufs.push((STATUS, 1, true));
        chain(&mem, 0, 32, 0, &bufs);
        notify(&mut t, &mem, 0);
        assert!(!t.is_broken());
        assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR], "len {len:#x}");
        assert_eq!(
            t.take_error(),
            Some(Error::Chain {
                queue: 0,
                defect: ChainDefect::TooLarge
            })
        );
        let buffers: Vec<_> = mem.log().into_iter().filter(|a| a.ipa >= BUF).collect();
        assert_eq!(
            buffers,
            [Access {
                write: true,
                ipa: STATUS,
                len: 1
            }]
        );
    }
}

#[test]
fn a_buffer_wrapping_the_address_space_fails_the_request() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    chain(
        &mem,
        0,
        N,
        0,
        &[
            (HDR, 16, false),
            (u64::MAX - 100, 512, true),
            (STATUS, 1, true),
        ],
    );
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
    assert_eq!(
        t.take_error(),
        Some(Error::Chain {
            queue: 0,
            defect: ChainDefect::Wraps
        })
    );
    assert!(mem.log().iter().all(|a| a.ipa < u64::MAX - 100));
}

#[test]
fn writable_before_readable_fails_the_request_and_reads_nothing() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    let before = t.device().backend().data.clone();
    chain(
        &mem,
        0,
        N,
        0,
        &[
            (HDR, 16, false),
            (STATUS + 8, 4, true),
            (DATA, 512, false),
            (STATUS, 1, true),
        ],
    );
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
    assert_eq!(
        t.take_error(),
        Some(Error::Chain {
            queue: 0,
            defect: ChainDefect::WritableBeforeReadable
        })
    );
    assert_eq!(
        t.device().backend().data,
        before,
        "nothing written to the disk"
    );
    assert!(mem
        .log()
        .iter()
        .filter(|a| a.ipa >= BUF)
        .all(|a| a.write && a.ipa == STATUS));
}

#[test]
fn a_malformed_chain_without_a_status_byte_breaks_the_device() {
    // Last descriptor device-readable: the driver could never learn the outcome.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    chain(
        &mem,
        0,
        N,
        0,
        &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)],
    );
    notify(&mut t, &mem, 0);
    assert_broken(&mut t, &mem, Error::Request { queue: 0 });
}

#[test]
fn request_header_in_a_faulting_page_fails_with_ioerr() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    good_read(&mem);
    mem.fault(HDR..HDR + 0x1000);
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(t.take_error(), Some(Error::Fault(Fault { ipa: HDR })));
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
    assert_eq!(used(&mem, 0, N, 0), (0, 1));
    assert!(
        mem.log().iter().all(|a| !(a.write && a.ipa == DATA)),
        "no data written"
    );
}

#[test]
fn data_buffer_in_a_faulting_page_fails_with_ioerr() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    good_read(&mem);
    mem.fault(DATA..DATA + 0x1000);
    notify(&mut t, &mem, 0);
    assert!(!t.is_broken());
    assert_eq!(t.take_error(), Some(Error::Fault(Fault { ipa: DATA })));
    assert_eq!(mem.get(STATUS, 1), [VIRTIO_BLK_S_IOERR]);
}

#[test]
fn rings_in_a_faulting_page_break_the_device() {
    for area in [desc_area(0), avail_area(0)] {
        let mem = FakeMem::new();
        let mut t = blk(&mem);
        good_read(&mem);
        mem.fault(area..area + 0x1000);
        notify(&mut t, &mem, 0);
        assert_broken(
            &mut t,
            &mem,
            Error::Fault(Fault {
                ipa: area + if area == avail_area(0) { 2 } else { 0 },
            }),
        );
    }
    // The used ring: the request was served, its completion cannot be published.
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    good_read(&mem);
    mem.fault(used_area(0)..used_area(0) + 0x1000);
    notify(&mut t, &mem, 0);
    assert!(t.is_broken() && needs_reset(&t));
    assert_eq!(
        t.take_error(),
        Some(Error::Fault(Fault {
            ipa: used_area(0) + 4
        }))
    );
}

#[test]
fn indirect_descriptor_breaks_the_device() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    assert_eq!(t.offered_features() & Feature::RING_INDIRECT_DESC.bits(), 0);
    desc(&mem, 0, 0, DATA, 48, INDIRECT, 0);
    offer(&mem, 0, N, 0);
    notify(&mut t, &mem, 0);
    assert_broken(&mut t, &mem, Error::Indirect { queue: 0 });
    assert!(
        mem.log().iter().all(|a| a.ipa < BUF),
        "the indirect table was not read"
    );
}

#[test]
fn queue_size_not_a_power_of_two_or_too_big_and_misaligned_rings_are_refused() {
    for (size, desc_at) in [
        (3, desc_area(0)),
        (0, desc_area(0)),
        (256, desc_area(0)),
        (8, desc_area(0) + 8),
    ] {
        let mem = FakeMem::new();
        let mut t = MmioTransport::new(Block::new(RamDisk::new(8)), false);
        assert!(negotiate(&mut t, &mem, Feature::VERSION_1.bits()));
        queue(&mut t, &mem, 0, size);
        if desc_at != desc_area(0) {
            w(&mut t, &mem, reg::QUEUE_READY, 0);
            w(&mut t, &mem, reg::QUEUE_DESC_LOW, desc_at as u32);
            w(&mut t, &mem, reg::QUEUE_READY, 1);
        }
        assert_eq!(r(&t, reg::QUEUE_READY), 0, "size {size} at {desc_at:#x}");
        assert!(t.is_broken() && needs_reset(&t));
        assert_eq!(t.take_error(), Some(Error::BadQueue { queue: 0 }));
        driver_ok(&mut t, &mem);
        good_read(&mem);
        notify(&mut t, &mem, 0);
        assert!(mem.log().is_empty(), "nothing touched");
    }
    assert_eq!(
        r(
            &MmioTransport::new(Block::new(RamDisk::new(8)), false),
            reg::QUEUE_NUM_MAX
        ),
        128
    );
}

#[test]
fn notify_before_driver_ok_touches_nothing() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Block::new(RamDisk::new(8)), false);
    assert!(negotiate(&mut t, &mem, Feature::VERSION_1.bits()));
    queue(&mut t, &mem, 0, u32::from(N));
    good_read(&mem);
    assert!(!notify(&mut t, &mem, 0));
    assert!(mem.log().is_empty());
    assert_eq!(used_idx(&mem, 0), 0);
    driver_ok(&mut t, &mem);
    assert!(notify(&mut t, &mem, 0));
    assert_eq!(used_idx(&mem, 0), 1);
    assert_eq!(mem.get(STATUS, 1), [0]);
}

#[test]
fn features_not_accepted_leave_the_device_stopped() {
    let access_platform = Feature::ACCESS_PLATFORM.bits();
    let v1 = Feature::VERSION_1.bits();
    for (offer_ap, features, ok) in [
        (false, 0, false),                                       // no VERSION_1
        (false, v1 | Feature::RING_INDIRECT_DESC.bits(), false), // not offered
        (false, v1 | access_platform, false),                    // not offered
        (true, v1 | access_platform, true),
        (true, v1, true), // ACCESS_PLATFORM may be declined
        (false, v1 | virtio_dev::blk::VIRTIO_BLK_F_FLUSH, true),
    ] {
        let mem = FakeMem::new();
        let mut t = MmioTransport::new(Block::new(RamDisk::new(8)), offer_ap);
        assert_eq!(t.offered_features() & access_platform != 0, offer_ap);
        assert_eq!(negotiate(&mut t, &mem, features), ok, "{features:#x}");
        queue(&mut t, &mem, 0, u32::from(N));
        driver_ok(&mut t, &mem);
        assert_eq!(r(&t, reg::STATUS) & DeviceStatus::DRIVER_OK.bits() != 0, ok);
        good_read(&mem);
        notify(&mut t, &mem, 0);
        assert_eq!(used_idx(&mem, 0), u16::from(ok), "{features:#x}");
    }
    // A feature word past the second (bits 64+) is refused too.
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Block::new(RamDisk::new(8)), false);
    w(&mut t, &mem, reg::DRIVER_FEATURES_SEL, 2);
    w(&mut t, &mem, reg::DRIVER_FEATURES, 1);
    w(&mut t, &mem, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, &mem, reg::DRIVER_FEATURES, 1);
    w(
        &mut t,
        &mem,
        reg::STATUS,
        ACK_DRIVER | DeviceStatus::FEATURES_OK.bits(),
    );
    assert_eq!(r(&t, reg::STATUS), ACK_DRIVER);
}

#[test]
fn a_broken_device_stays_broken_until_reset() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    offer(&mem, 0, N, N); // bad head
    notify(&mut t, &mem, 0);
    assert!(t.is_broken());
    // A good request now: ignored, memory untouched.
    mem.clear_log();
    good_read(&mem);
    notify(&mut t, &mem, 0);
    assert!(mem.log().is_empty());
    // Acknowledging the interrupt lowers the line, but NEEDS_RESET stays.
    assert!(!w(&mut t, &mem, reg::INTERRUPT_ACK, 3));
    assert!(!t.interrupt_pending());
    let s = r(&t, reg::STATUS);
    assert_ne!(s & DeviceStatus::DEVICE_NEEDS_RESET.bits(), 0);
    // Status writes without 0 do not clear it; re-making the queue ready neither.
    w(
        &mut t,
        &mem,
        reg::STATUS,
        s & !DeviceStatus::DEVICE_NEEDS_RESET.bits(),
    );
    w(&mut t, &mem, reg::QUEUE_READY, 1);
    notify(&mut t, &mem, 0);
    assert!(t.is_broken() && mem.log().is_empty());
    // Reset: everything back to the initial state.
    w(&mut t, &mem, reg::STATUS, 0);
    assert!(!t.is_broken());
    assert_eq!(r(&t, reg::STATUS), 0);
    assert_eq!(r(&t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(r(&t, reg::QUEUE_READY), 0);
    // A fresh start works; the driver zeroed its rings.
    for a in [avail_area(0), used_area(0)] {
        mem.put(a, &[0; 0x100]);
    }
    start(&mut t, &mem, 1, u32::from(N));
    good_read(&mem);
    assert!(notify(&mut t, &mem, 0));
    assert_eq!(used(&mem, 0, N, 0), (0, 513));
    assert_eq!(mem.get(STATUS, 1), [0]);
}

#[test]
fn a_driver_that_keeps_adding_buffers_gets_at_most_a_queue_per_notify() {
    use virtio_dev::console::{Console, QUEUE_TX};
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Console::new(Sink::default()), false);
    start(&mut t, &mem, 2, u32::from(N));
    mem.put(BUF, b"x");
    desc(&mem, QUEUE_TX, 0, BUF, 1, 0, 0);
    offer(&mem, QUEUE_TX, N, 0);
    // Every ring slot names descriptor 0, and every read of avail idx makes it one more.
    mem.bump_after_read.set(Some(avail_area(QUEUE_TX) + 2));
    notify(&mut t, &mem, QUEUE_TX);
    assert!(!t.is_broken());
    let served = usize::from(virtio_dev::QUEUE_SIZE_MAX);
    assert_eq!(t.device_mut().output().0.len(), served);
    assert_eq!(used_idx(&mem, QUEUE_TX), served as u16);
}

#[test]
fn queue_registers_are_frozen_while_ready() {
    let mem = FakeMem::new();
    let mut t = blk(&mem);
    w(&mut t, &mem, reg::QUEUE_NUM, 3);
    w(&mut t, &mem, reg::QUEUE_DESC_LOW, 0x1234);
    assert_eq!(r(&t, reg::QUEUE_NUM), u32::from(N));
    assert_eq!(r(&t, reg::QUEUE_DESC_LOW), desc_area(0) as u32);
    good_read(&mem);
    notify(&mut t, &mem, 0);
    assert_eq!(mem.get(STATUS, 1), [0]);
}
