//! The console (transmit to a sink, input into receive buffers) and the network device
//! (frames with their virtio_net_hdr both ways) through the fake memory.

mod common;

use common::*;
use virtio_dev::console::{Console, INPUT_BYTES, QUEUE_RX, QUEUE_TX};
use virtio_dev::net::{self, Net, RxError, NET_HDR_LEN};
use virtio_dev::transport::reg;
use virtio_dev::{ChainDefect, DeviceType, Error, Fault, MmioTransport};

const N: u16 = 4;

fn console(mem: &FakeMem) -> MmioTransport<Console<Sink>> {
    let mut t = MmioTransport::new(Console::new(Sink::default()), false);
    start(&mut t, mem, 2, u32::from(N));
    t
}

#[test]
fn console_transmit_goes_to_the_sink_in_order() {
    let mem = FakeMem::new();
    let mut t = console(&mem);
    assert_eq!(r(&t, reg::DEVICE_ID), DeviceType::Console as u32);
    mem.put(BUF, b"hello, ");
    mem.put(BUF + 0x100, b"world\n");
    chain(
        &mem,
        QUEUE_TX,
        N,
        0,
        &[(BUF, 7, false), (BUF + 0x100, 6, false)],
    );
    mem.put(BUF + 0x200, b"more");
    chain(&mem, QUEUE_TX, N, 2, &[(BUF + 0x200, 4, false)]);
    assert!(notify(&mut t, &mem, QUEUE_TX));
    assert_eq!(t.device_mut().output().0, b"hello, world\nmore");
    assert_eq!(
        [used(&mem, QUEUE_TX, N, 0), used(&mem, QUEUE_TX, N, 1)],
        [(0, 0), (2, 0)]
    );
    // A defective chain is returned unread.
    chain(&mem, QUEUE_TX, N, 3, &[(BUF, 0, false)]);
    notify(&mut t, &mem, QUEUE_TX);
    assert_eq!(t.device_mut().output().0.len(), 17);
    assert_eq!(
        t.take_error(),
        Some(Error::Chain {
            queue: QUEUE_TX,
            defect: ChainDefect::ZeroLength
        })
    );
    assert_eq!(used_idx(&mem, QUEUE_TX), 3);
    assert!(!t.is_broken());
}

#[test]
fn console_input_waits_for_receive_buffers_then_fills_them() {
    let mem = FakeMem::new();
    let mut t = console(&mem);
    // No buffer posted yet: buffered.
    assert_eq!(t.push_input(&mem, b"abcdef"), 6);
    assert_eq!(t.device().pending_input(), 6);
    assert!(!t.interrupt_pending());
    // Two 4-byte buffers posted: the notify delivers into both.
    chain(&mem, QUEUE_RX, N, 0, &[(BUF, 4, true)]);
    chain(&mem, QUEUE_RX, N, 1, &[(BUF + 0x10, 4, true)]);
    assert!(notify(&mut t, &mem, QUEUE_RX));
    assert_eq!(mem.get(BUF, 4), b"abcd");
    assert_eq!(mem.get(BUF + 0x10, 2), b"ef");
    assert_eq!(
        [used(&mem, QUEUE_RX, N, 0), used(&mem, QUEUE_RX, N, 1)],
        [(0, 4), (1, 2)]
    );
    assert_eq!(t.device().pending_input(), 0);
    // With a buffer posted, input goes straight in.
    w(&mut t, &mem, reg::INTERRUPT_ACK, 1);
    chain(&mem, QUEUE_RX, N, 2, &[(BUF + 0x20, 16, true)]);
    notify(&mut t, &mem, QUEUE_RX);
    assert_eq!(
        used_idx(&mem, QUEUE_RX),
        2,
        "no input: the buffer stays posted"
    );
    assert_eq!(t.push_input(&mem, b"xy"), 2);
    assert!(t.interrupt_pending());
    assert_eq!(used(&mem, QUEUE_RX, N, 2), (2, 2));
    assert_eq!(mem.get(BUF + 0x20, 2), b"xy");
    // The input buffer has a limit.
    assert_eq!(t.push_input(&mem, &[b'z'; 300]), INPUT_BYTES);
}

#[test]
fn console_input_into_a_faulting_buffer_is_kept_and_reported() {
    let mem = FakeMem::new();
    let mut t = console(&mem);
    mem.fault(BUF..BUF + 0x1000);
    chain(&mem, QUEUE_RX, N, 0, &[(BUF, 8, true)]);
    assert_eq!(t.push_input(&mem, b"data"), 4);
    assert_eq!(t.take_error(), Some(Error::Fault(Fault { ipa: BUF })));
    assert_eq!(used(&mem, QUEUE_RX, N, 0), (0, 0));
    assert_eq!(
        t.device().pending_input(),
        4,
        "nothing delivered, nothing lost"
    );
    assert!(!t.is_broken());
}

#[test]
fn console_input_before_driver_ok_is_kept() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Console::new(Sink::default()), false);
    assert_eq!(t.push_input(&mem, b"early"), 5);
    assert!(mem.log().is_empty());
    start(&mut t, &mem, 2, u32::from(N));
    chain(&mem, QUEUE_RX, N, 0, &[(BUF, 8, true)]);
    notify(&mut t, &mem, QUEUE_RX);
    assert_eq!(used(&mem, QUEUE_RX, N, 0), (0, 5));
    assert_eq!(mem.get(BUF, 5), b"early");
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn net(mem: &FakeMem) -> MmioTransport<Net<Frames>> {
    let mut t = MmioTransport::new(Net::new(Frames::default(), MAC), false);
    start(&mut t, mem, 2, u32::from(N));
    t
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 3) as u8).collect()
}

#[test]
fn net_identity_mac_and_features() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Net::new(Frames::default(), MAC), true);
    assert_eq!(r(&t, reg::DEVICE_ID), DeviceType::Network as u32);
    w(&mut t, &mem, reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        u64::from(r(&t, reg::DEVICE_FEATURES)),
        net::VIRTIO_NET_F_MAC
    );
    w(&mut t, &mem, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        r(&t, reg::DEVICE_FEATURES),
        0b11,
        "VERSION_1 and ACCESS_PLATFORM"
    );
    let cfg: Vec<u8> = (0..8).map(|i| t.read(reg::CONFIG + i, 1) as u8).collect();
    assert_eq!(cfg, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0]);
    assert_eq!(t.read(reg::CONFIG + 4, 2), 0x5634);
}

#[test]
fn net_transmit_strips_the_header() {
    let mem = FakeMem::new();
    let mut t = net(&mem);
    let f = frame(60);
    mem.put(BUF, &[0; NET_HDR_LEN]);
    mem.put(BUF + 0x100, &f);
    chain(
        &mem,
        net::QUEUE_TX,
        N,
        0,
        &[(BUF, NET_HDR_LEN as u32, false), (BUF + 0x100, 60, false)],
    );
    // Header and frame in one buffer (VERSION_1 lets the driver lay it out freely).
    let mut one = vec![0; NET_HDR_LEN];
    one.extend_from_slice(&frame(1514));
    mem.put(BUF + 0x1000, &one);
    chain(
        &mem,
        net::QUEUE_TX,
        N,
        2,
        &[(BUF + 0x1000, one.len() as u32, false)],
    );
    assert!(notify(&mut t, &mem, net::QUEUE_TX));
    assert_eq!(t.device().backend().0, [f, frame(1514)]);
    assert_eq!(used(&mem, net::QUEUE_TX, N, 1), (2, 0));
}

/// A backend that is full leaves the guest's frames in its transmitq (not
/// taken, not dropped, not returned), and `resume_transmit` takes them once
/// it has room, in order, with the used-buffer interrupt.
#[test]
fn net_transmit_waits_in_the_guests_queue_while_the_backend_is_full() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(
        Net::new(
            Limited {
                frames: vec![],
                room: 1,
            },
            MAC,
        ),
        false,
    );
    start(&mut t, &mem, 2, u32::from(N));
    for (i, len) in [60usize, 61, 62].into_iter().enumerate() {
        let at = BUF + 0x800 * i as u64;
        let mut b = vec![0; NET_HDR_LEN];
        b.extend_from_slice(&frame(len));
        mem.put(at, &b);
        chain(
            &mem,
            net::QUEUE_TX,
            N,
            i as u16,
            &[(at, b.len() as u32, false)],
        );
    }
    assert!(notify(&mut t, &mem, net::QUEUE_TX));
    assert_eq!(t.device().backend().frames, [frame(60)]);
    assert_eq!(
        used_idx(&mem, net::QUEUE_TX),
        1,
        "only the frame taken is used"
    );
    // Still full: nothing more moves.
    t.resume_transmit(&mem);
    assert_eq!(used_idx(&mem, net::QUEUE_TX), 1);
    // Room again: the rest go, in order.
    t.device_mut().backend_mut().room = 8;
    let _ = t.interrupt_pending();
    t.resume_transmit(&mem);
    assert_eq!(
        t.device().backend().frames,
        [frame(60), frame(61), frame(62)]
    );
    assert_eq!(used_idx(&mem, net::QUEUE_TX), 3);
    assert!(
        t.interrupt_pending(),
        "the driver hears of the used buffers"
    );
    assert!(!t.is_broken());
}

#[test]
fn net_transmit_refuses_offload_headers_and_bad_lengths() {
    // NEEDS_CSUM, a GSO type, a runt frame, a header only, a jumbo frame.
    let mut csum = [0u8; NET_HDR_LEN];
    csum[0] = 1;
    let mut gso = [0u8; NET_HDR_LEN];
    gso[1] = 1;
    for (hdr, len) in [
        (csum, 60),
        (gso, 60),
        ([0; NET_HDR_LEN], 13),
        ([0; NET_HDR_LEN], 0),
        ([0; NET_HDR_LEN], 1519),
    ] {
        let mem = FakeMem::new();
        let mut t = net(&mem);
        let mut pkt = hdr.to_vec();
        pkt.extend_from_slice(&frame(len));
        mem.put(BUF, &pkt);
        chain(&mem, net::QUEUE_TX, N, 0, &[(BUF, pkt.len() as u32, false)]);
        notify(&mut t, &mem, net::QUEUE_TX);
        assert!(t.device().backend().0.is_empty(), "{hdr:?} {len}");
        assert_eq!(
            t.take_error(),
            Some(Error::Request {
                queue: net::QUEUE_TX
            })
        );
        assert_eq!(used(&mem, net::QUEUE_TX, N, 0), (0, 0));
        assert!(!t.is_broken());
    }
}

#[test]
fn net_receive_writes_header_and_frame() {
    let mem = FakeMem::new();
    let mut t = net(&mem);
    assert_eq!(t.receive(&mem, &frame(64)), Err(RxError::NoBuffer));
    assert!(!t.can_receive(&mem));
    mem.put(BUF, &[0xee; 2048]);
    // A 1526-byte buffer in two pieces (the size Linux posts without mergeable buffers).
    chain(
        &mem,
        net::QUEUE_RX,
        N,
        0,
        &[(BUF, 10, true), (BUF + 0x100, 1516, true)],
    );
    notify(&mut t, &mem, net::QUEUE_RX);
    assert_eq!(used_idx(&mem, net::QUEUE_RX), 0, "posting is not receiving");
    assert!(t.can_receive(&mem));
    assert!(t.can_receive(&mem), "asking takes nothing");
    assert_eq!(t.receive(&mem, &frame(64)), Ok(()));
    assert!(t.interrupt_pending());
    assert_eq!(
        used(&mem, net::QUEUE_RX, N, 0),
        (0, (NET_HDR_LEN + 64) as u32)
    );
    assert!(!t.can_receive(&mem), "the one buffer is used");
    // Header: all zero but num_buffers = 1, split over the two descriptors.
    assert_eq!(mem.get(BUF, 10), [0; 10]);
    assert_eq!(mem.get(BUF + 0x100, 2), [1, 0]);
    assert_eq!(mem.get(BUF + 0x102, 64), frame(64));
    assert_eq!(mem.get(BUF + 0x142, 1), [0xee], "nothing past the frame");
    // Too big for the next buffer: returned empty, frame dropped.
    chain(&mem, net::QUEUE_RX, N, 2, &[(BUF + 0x800, 100, true)]);
    assert_eq!(t.receive(&mem, &frame(200)), Err(RxError::BadBuffer));
    assert_eq!(used(&mem, net::QUEUE_RX, N, 1), (2, 0));
    assert_eq!(t.receive(&mem, &frame(1519)), Err(RxError::BadFrame));
    assert_eq!(t.receive(&mem, &frame(13)), Err(RxError::BadFrame));
    // A faulting buffer.
    mem.fault(BUF + 0x3000..BUF + 0x4000);
    chain(&mem, net::QUEUE_RX, N, 3, &[(BUF + 0x3000, 1526, true)]);
    assert_eq!(t.receive(&mem, &frame(64)), Err(RxError::Fault));
    assert!(!t.is_broken());
}

#[test]
fn net_receive_into_a_broken_or_stopped_device_is_refused() {
    let mem = FakeMem::new();
    let mut t = MmioTransport::new(Net::new(Frames::default(), MAC), false);
    assert_eq!(t.receive(&mem, &frame(64)), Err(RxError::NoBuffer));
    assert!(!t.can_receive(&mem));
    assert!(mem.log().is_empty());
    let mut t = net(&mem);
    mem.put16(avail_area(net::QUEUE_RX) + 2, 2 * N); // runaway idx
    assert_eq!(t.receive(&mem, &frame(64)), Err(RxError::Broken));
    assert!(t.is_broken() && needs_reset(&t));
    assert!(!t.can_receive(&mem), "a broken device takes nothing");
    assert_eq!(t.receive(&mem, &frame(64)), Err(RxError::NoBuffer));
}
