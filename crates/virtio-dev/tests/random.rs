//! Random descriptor tables, rings and faulting pages fed to every device (seeded xorshift,
//! so a failure names its seed). For each case: no panic, a bounded number of memory
//! accesses, every read inside the rings or a device-readable descriptor's buffer, every
//! write inside the used ring or a device-writable descriptor's buffer, and a broken device
//! that says so.

mod common;

use common::*;
use virtio_dev::blk::{
    Block, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_dev::console::Console;
use virtio_dev::net::Net;
use virtio_dev::transport::reg;
use virtio_dev::{Device, DeviceStatus, Feature, MmioTransport, MAX_CHAIN_BYTES, MAX_DESC_LEN};

/// xorshift64 (Marsaglia 2003).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const SECTORS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
}

/// Fills the table, the ring and the buffers of queue `q`; returns the descriptors.
fn scramble(rng: &mut Rng, mem: &FakeMem, q: u16, size: u16) -> Vec<D> {
    let mut table = Vec::new();
    for i in 0..size {
        let addr = match rng.below(10) {
            0 => BASE + SIZE as u64 - rng.below(64), // runs off the end
            1 => rng.below(BASE),                    // below guest RAM
            2 => u64::MAX - rng.below(4096),         // wraps
            3 => rng.next(),
            _ => BUF + rng.below(0x8000),
        };
        let len = match rng.below(10) {
            0 => 0,
            1 => u32::MAX,
            2 => MAX_DESC_LEN + rng.below(2) as u32,
            3 => 16,
            4 => 512,
            5 => 1,
            _ => rng.below(1600) as u32,
        };
        let mut flags = 0;
        if rng.chance(50) {
            flags |= NEXT;
        }
        if rng.chance(50) {
            flags |= WRITE;
        }
        if rng.chance(3) {
            flags |= INDIRECT;
        }
        if rng.chance(3) {
            flags |= (rng.next() as u16) & 0xfff8;
        }
        let next = if rng.chance(90) {
            rng.below(u64::from(size)) as u16
        } else {
            rng.next() as u16
        };
        desc(mem, q, i, addr, len, flags, next);
        table.push(D { addr, len, flags });
        // Sometimes a plausible block request header at the buffer.
        if rng.chance(50) && (BUF..BUF + 0x8ff0).contains(&addr) {
            let kind = rng.pick(&[
                VIRTIO_BLK_T_IN,
                VIRTIO_BLK_T_OUT,
                VIRTIO_BLK_T_FLUSH,
                VIRTIO_BLK_T_GET_ID,
                7,
            ]);
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&rng.below(SECTORS as u64 + 2).to_le_bytes());
            mem.put(addr, &h);
        }
    }
    for s in 0..size {
        let head = if rng.chance(90) {
            rng.below(u64::from(size)) as u16
        } else {
            rng.next() as u16
        };
        mem.put16(avail_area(q) + 4 + 2 * u64::from(s), head);
    }
    let idx = if rng.chance(90) {
        rng.below(u64::from(size) + 1) as u16
    } else {
        rng.next() as u16
    };
    mem.put16(avail_area(q) + 2, idx);
    mem.put16(avail_area(q), rng.below(2) as u16);
    table
}

/// Checks every logged access against the queues' areas and descriptors.
fn check_accesses(seed: u64, mem: &FakeMem, queues: &[(u16, u16, Vec<D>)]) {
    let inside = |a: &Access, start: u64, len: u64| {
        a.ipa >= start
            && a.ipa
                .checked_add(a.len)
                .is_some_and(|e| e <= start.saturating_add(len))
    };
    for a in mem.log() {
        let ok = queues.iter().any(|(q, size, table)| {
            let n = u64::from(*size);
            if a.write {
                inside(&a, used_area(*q), 4 + 8 * n)
                    || table
                        .iter()
                        .any(|d| d.flags & WRITE != 0 && inside(&a, d.addr, u64::from(d.len)))
            } else {
                inside(&a, desc_area(*q), 16 * n)
                    || inside(&a, avail_area(*q), 4 + 2 * n)
                    || table
                        .iter()
                        .any(|d| d.flags & WRITE == 0 && inside(&a, d.addr, u64::from(d.len)))
            }
        });
        assert!(ok, "seed {seed}: {a:?} is outside the rings and buffers");
    }
}

/// Runs one case on `t`, whose queues `rx`/`tx` are random; `host` is the host's own push
/// (console input, a received frame), if the device has one.
fn case<D: Device>(
    seed: u64,
    rng: &mut Rng,
    mut t: MmioTransport<D>,
    queues: u16,
    host: impl Fn(&mut MmioTransport<D>, &FakeMem, &mut Rng),
) {
    let mem = FakeMem::new();
    let size = if rng.chance(95) {
        1u16 << rng.below(6)
    } else {
        rng.pick(&[0, 3, 6, 256])
    };
    negotiate(&mut t, &mem, Feature::VERSION_1.bits());
    let mut tables = Vec::new();
    for q in 0..queues {
        queue(&mut t, &mem, q, u32::from(size));
        let table = if size.is_power_of_two() && size <= 128 {
            scramble(rng, &mem, q, size)
        } else {
            Vec::new()
        };
        tables.push((q, size, table));
    }
    driver_ok(&mut t, &mem);
    for _ in 0..rng.below(3) {
        let page = BASE + 0x1000 * rng.below(SIZE as u64 / 0x1000);
        mem.fault(page..page + 0x1000 * (1 + rng.below(4)));
    }
    mem.clear_log();
    for _ in 0..3 {
        if rng.chance(30) {
            host(&mut t, &mem, rng);
        } else {
            notify(&mut t, &mem, rng.below(u64::from(queues) + 1) as u16);
        }
    }
    // Bounded: three rounds of at most `size` chains, each at most `size` descriptors read
    // and its buffers accessed in pieces of at least 64 bytes or per descriptor.
    let n = u64::from(size.min(128));
    let per_chain = 8 + 3 * n + MAX_CHAIN_BYTES / 64;
    assert!(
        mem.log().len() as u64 <= 3 * (4 + n * per_chain),
        "seed {seed}: {} accesses",
        mem.log().len()
    );
    check_accesses(seed, &mem, &tables);
    let s = r(&t, reg::STATUS);
    assert_eq!(
        s & DeviceStatus::DEVICE_NEEDS_RESET.bits() != 0,
        t.is_broken(),
        "seed {seed}"
    );
    if t.is_broken() {
        assert_ne!(r(&t, reg::INTERRUPT_STATUS) & 2, 0, "seed {seed}");
        // Reset clears it.
        w(&mut t, &mem, reg::STATUS, 0);
        assert!(!t.is_broken() && r(&t, reg::STATUS) == 0, "seed {seed}");
    } else if size.is_power_of_two() && size <= 128 {
        // What was pushed names real heads.
        for (q, size, _) in &tables {
            for k in 0..used_idx(&mem, *q).min(*size) {
                assert!(used(&mem, *q, *size, k).0 < u32::from(*size), "seed {seed}");
            }
        }
    }
}

#[test]
fn random_queues_never_escape_their_buffers() {
    let cases: u64 = 4000;
    for seed in 1..=cases {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        match seed % 3 {
            0 => {
                let t = MmioTransport::new(Block::new(RamDisk::new(SECTORS)), rng.chance(50));
                case(seed, &mut rng, t, 1, |_, _, _| {});
            }
            1 => {
                let t = MmioTransport::new(Console::new(Sink::default()), false);
                case(seed, &mut rng, t, 2, |t, mem, rng| {
                    let n = rng.below(400) as usize;
                    t.push_input(mem, &vec![b'i'; n]);
                });
            }
            _ => {
                let t = MmioTransport::new(Net::new(Frames::default(), [2, 0, 0, 0, 0, 1]), false);
                case(seed, &mut rng, t, 2, |t, mem, rng| {
                    let n = rng.below(1600) as usize;
                    let _ = t.receive(mem, &vec![0xab; n]);
                });
            }
        }
    }
}
