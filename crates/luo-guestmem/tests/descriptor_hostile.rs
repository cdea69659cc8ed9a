//! The descriptor parser against hostile bytes (the body of a fuzz target, run on stable over
//! truncated, bit-flipped, spliced and random inputs): it never panics, refuses what breaks the
//! layout even with a repaired checksum, and what it accepts is canonical.

use luo_guestmem::descriptor::{Descriptor, fuzz_one};
use luo_guestmem::{Attr, GuestMemory, PageSize};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut m = GuestMemory::create(64 << 20, PageSize::Base4K).expect("create");
    out.push(m.to_descriptor().encode(0));
    m.convert(0x1000..0x5000, Attr::Private).expect("convert");
    m.convert(0x10_0000..0x40_0000, Attr::Private)
        .expect("convert");
    m.set_ram_token(3).expect("token");
    out.push(m.to_descriptor().encode(8));
    // Huge-page geometries, built as descriptors (no pool needed).
    for (page, backing) in [
        (PageSize::Huge2M, luo_guestmem::Backing::Hugetlb),
        (PageSize::Huge1G, luo_guestmem::Backing::Hugetlb),
    ] {
        let mut d = m.to_descriptor();
        d.page_size = page;
        d.backing = backing;
        d.size = 4 * page.bytes();
        d.split = d
            .attrs
            .private_ranges()
            .flat_map(|r| [r.start, r.end])
            .filter(|b| b % page.bytes() != 0)
            .map(|b| b / page.bytes())
            .fold(Vec::new(), |mut v, p| {
                if v.last() != Some(&p) {
                    v.push(p);
                }
                v
            });
        out.push(d.encode(2));
    }
    out
}

#[test]
fn seeds_are_accepted() {
    for s in seeds() {
        assert!(fuzz_one(&s));
        assert!(Descriptor::parse(&s).is_ok());
    }
}

#[test]
fn mutated_descriptors_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut accepted = 0;
    for i in 0..20_000 {
        let mut b = seeds[i % seeds.len()].clone();
        match rng.next() % 5 {
            0 => b.truncate((rng.next() as usize) % (b.len() + 1)),
            1 => {
                for _ in 0..1 + rng.next() % 4 {
                    let at = (rng.next() as usize) % b.len();
                    b[at] ^= 1 << (rng.next() % 8);
                }
            }
            2 => {
                let at = (rng.next() as usize) % b.len();
                b[at] = rng.next() as u8;
            }
            3 => {
                let extra = (rng.next() % 40) as usize;
                b.extend((0..extra).map(|_| rng.next() as u8));
            }
            _ => {
                let len = (rng.next() % 200) as usize;
                b = (0..len).map(|_| rng.next() as u8).collect();
            }
        }
        if fuzz_one(&b) {
            accepted += 1;
        }
    }
    // Most mutations break a field check even with a repaired checksum.
    assert!(accepted < 10_000, "{accepted} accepted");
}
