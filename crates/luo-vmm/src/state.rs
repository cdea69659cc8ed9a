//! [`VmState`]: everything of a stopped VM that lives outside guest RAM — vCPU registers,
//! special registers, FPU and XSAVE, XCRs, MSRs, LAPIC, pending events, MP state, debug
//! registers, the interrupt controllers, the KVM clock, and the progress device — and its
//! serialized form, the *state memfd* a VMM preserves next to the guest memory.
//!
//! **The state memfd is a contract** between a VMM and its successor (perhaps a newer binary):
//!
//! ```text
//!  offset 0         8         12        16
//!         +---------+---------+---------+-----------------------------------------+
//!         | magic   | version | count   | count x section { kind u32, len u32, bytes } |
//!         +---------+---------+---------+-----------------------------------------+
//! ```
//!
//! `magic` is `LUOVMST\0`, `version` is [`VERSION`]. Each section's bytes are the KVM struct of
//! its kind as the kernel's uAPI lays it out (x86_64, little-endian), except `FPU` (the fields
//! of `kvm_fpu` in order), `MSRS` (`{index u32, reserved u32, data u64}` entries) and
//! `PROGRESS` ([`Progress`]). Unknown kinds are refused, and so is a length that is not the
//! kind's. A reader bounds the file at [`MAX_LEN`]. Changing a section bumps [`VERSION`].

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuFd, VmFd};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::Error;
use crate::progress::Progress;

/// `magic` of the state memfd.
pub const MAGIC: [u8; 8] = *b"LUOVMST\0";
/// Version of the layout.
pub const VERSION: u32 = 1;
/// The longest state file a reader accepts.
pub const MAX_LEN: usize = 1 << 20;

/// The MSRs saved and restored (those of them KVM supports): SYSENTER, the SYSCALL family,
/// KERNEL_GS_BASE, TSC, TSC_AUX, MISC_ENABLE and PAT.
pub const MSRS: [u32; 12] = [
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0x10,        // IA32_TSC
    0xc000_0103, // TSC_AUX
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
];

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Regs = 1,
    Sregs = 2,
    Fpu = 3,
    Xsave = 4,
    Xcrs = 5,
    Lapic = 6,
    Msrs = 7,
    Events = 8,
    MpState = 9,
    DebugRegs = 10,
    PicMaster = 11,
    PicSlave = 12,
    Ioapic = 13,
    Clock = 14,
    Progress = 15,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Kind> {
        use Kind::*;
        [
            Regs, Sregs, Fpu, Xsave, Xcrs, Lapic, Msrs, Events, MpState, DebugRegs, PicMaster,
            PicSlave, Ioapic, Clock, Progress,
        ]
        .into_iter()
        .find(|k| *k as u32 == raw)
    }
}

/// A stopped VM's state outside guest RAM.
#[derive(Clone, Debug, Default)]
pub struct VmState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: kvm_fpu,
    /// The whole XSAVE area (AVX and later), when KVM offers it in 4 KiB.
    pub xsave: Option<Vec<u8>>,
    /// XCR0, when the CPU has XSAVE.
    pub xcrs: Option<kvm_xcrs>,
    /// The local APIC's registers.
    pub lapic: Option<kvm_lapic_state>,
    /// MSR index and value pairs.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI…
    pub mp_state: kvm_mp_state,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The two PICs and the IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The KVM clock.
    pub clock: kvm_clock_data,
    /// The progress device.
    pub progress: Progress,
}

impl VmState {
    /// Saves the state of a stopped vCPU and its VM. `msrs` are the indexes to save (those
    /// KVM supports); `xsave` says whether the 4 KiB XSAVE area holds the whole state.
    pub fn save(
        vm: &VmFd,
        vcpu: &VcpuFd,
        msrs: &[u32],
        xsave: bool,
        progress: Progress,
    ) -> Result<VmState, Error> {
        let mut irqchips = Vec::new();
        for chip in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut c = kvm_irqchip {
                chip_id: chip,
                ..Default::default()
            };
            vm.get_irqchip(&mut c)
                .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
            irqchips.push(c);
        }
        let mut entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msr_list = Msrs::from_entries(&entries).map_err(|_| Error::State("MSR list"))?;
        let n = vcpu
            .get_msrs(&mut msr_list)
            .map_err(Error::kvm("KVM_GET_MSRS"))?;
        entries = msr_list.as_slice()[..n].to_vec();
        Ok(VmState {
            regs: vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?,
            xsave: if xsave {
                Some(
                    vcpu.get_xsave()
                        .map_err(Error::kvm("KVM_GET_XSAVE"))?
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                None
            },
            xcrs: vcpu.get_xcrs().ok(),
            lapic: Some(vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?),
            msrs: entries.iter().map(|e| (e.index, e.data)).collect(),
            events: vcpu
                .get_vcpu_events()
                .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu
                .get_mp_state()
                .map_err(Error::kvm("KVM_GET_MP_STATE"))?,
            debugregs: vcpu
                .get_debug_regs()
                .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?,
            irqchips,
            clock: vm.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?,
            progress,
        })
    }

    /// Loads the state into a new VM and its (not yet run) vCPU.
    pub fn restore(&self, vm: &VmFd, vcpu: &VcpuFd) -> Result<(), Error> {
        for c in &self.irqchips {
            vm.set_irqchip(c).map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
        }
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
        if let Some(bytes) = &self.xsave {
            let x = kvm_xsave::read_from_bytes(bytes).map_err(|_| Error::State("xsave size"))?;
            // SAFETY: `x` is a whole `kvm_xsave` (4 KiB) read by KVM_GET_XSAVE, and it is only
            // saved when KVM's XSAVE area fits in 4 KiB (KVM_CAP_XSAVE2 <= 4096), so the
            // kernel reads no byte past the struct.
            #[allow(unsafe_code)]
            unsafe { vcpu.set_xsave(&x) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
        }
        if let Some(x) = &self.xcrs {
            vcpu.set_xcrs(x).map_err(Error::kvm("KVM_SET_XCRS"))?;
        }
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::State("MSR list"))?;
        let n = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if n != entries.len() {
            return Err(Error::State("MSR value refused by KVM"));
        }
        if let Some(l) = &self.lapic {
            vcpu.set_lapic(l).map_err(Error::kvm("KVM_SET_LAPIC"))?;
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        Ok(())
    }

    /// The state memfd's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        let mut put = |kind: Kind, bytes: &[u8]| {
            out.extend_from_slice(&(kind as u32).to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
            count += 1;
        };
        put(Kind::Regs, self.regs.as_bytes());
        put(Kind::Sregs, self.sregs.as_bytes());
        put(Kind::Fpu, &fpu_bytes(&self.fpu));
        if let Some(x) = &self.xsave {
            put(Kind::Xsave, x);
        }
        if let Some(x) = &self.xcrs {
            put(Kind::Xcrs, x.as_bytes());
        }
        if let Some(l) = &self.lapic {
            put(Kind::Lapic, l.as_bytes());
        }
        let mut msrs = Vec::with_capacity(self.msrs.len() * 16);
        for &(index, data) in &self.msrs {
            msrs.extend_from_slice(&index.to_le_bytes());
            msrs.extend_from_slice(&0u32.to_le_bytes());
            msrs.extend_from_slice(&data.to_le_bytes());
        }
        put(Kind::Msrs, &msrs);
        put(Kind::Events, self.events.as_bytes());
        put(Kind::MpState, self.mp_state.as_bytes());
        put(Kind::DebugRegs, self.debugregs.as_bytes());
        for c in &self.irqchips {
            let kind = match c.chip_id {
                KVM_IRQCHIP_PIC_MASTER => Kind::PicMaster,
                KVM_IRQCHIP_PIC_SLAVE => Kind::PicSlave,
                _ => Kind::Ioapic,
            };
            put(kind, c.as_bytes());
        }
        put(Kind::Clock, self.clock.as_bytes());
        put(Kind::Progress, self.progress.as_bytes());
        out[12..16].copy_from_slice(&count.to_le_bytes());
        out
    }

    /// Parses a state memfd's bytes, treating them as hostile.
    pub fn decode(bytes: &[u8]) -> Result<VmState, Error> {
        if bytes.len() > MAX_LEN || bytes.len() < 16 {
            return Err(Error::State("length"));
        }
        if bytes[..8] != MAGIC {
            return Err(Error::State("magic"));
        }
        if le32(&bytes[8..12]) != VERSION {
            return Err(Error::State("version"));
        }
        let count = le32(&bytes[12..16]);
        let mut rest = &bytes[16..];
        let mut s = VmState::default();
        let mut seen = 0u32;
        let (mut regs, mut sregs, mut fpu, mut progress, mut clock) =
            (false, false, false, false, false);
        for _ in 0..count {
            if rest.len() < 8 {
                return Err(Error::State("section header"));
            }
            let kind = Kind::from_raw(le32(&rest[..4])).ok_or(Error::State("section kind"))?;
            let len = le32(&rest[4..8]) as usize;
            let body = rest.get(8..8 + len).ok_or(Error::State("section length"))?;
            rest = &rest[8 + len..];
            if seen & (1 << kind as u32) != 0 {
                return Err(Error::State("repeated section"));
            }
            seen |= 1 << kind as u32;
            let bad = || Error::State("section size");
            match kind {
                Kind::Regs => {
                    s.regs = kvm_regs::read_from_bytes(body).map_err(|_| bad())?;
                    regs = true;
                }
                Kind::Sregs => {
                    s.sregs = kvm_sregs::read_from_bytes(body).map_err(|_| bad())?;
                    sregs = true;
                }
                Kind::Fpu => {
                    s.fpu = fpu_from(body).ok_or_else(bad)?;
                    fpu = true;
                }
                Kind::Xsave => {
                    if body.len() != size_of::<kvm_xsave>() {
                        return Err(bad());
                    }
                    s.xsave = Some(body.to_vec());
                }
                Kind::Xcrs => s.xcrs = Some(kvm_xcrs::read_from_bytes(body).map_err(|_| bad())?),
                Kind::Lapic => {
                    s.lapic = Some(kvm_lapic_state::read_from_bytes(body).map_err(|_| bad())?);
                }
                Kind::Msrs => {
                    if body.len() % 16 != 0 || body.len() / 16 > 256 {
                        return Err(bad());
                    }
                    s.msrs = body
                        .chunks_exact(16)
                        .map(|c| (le32(&c[..4]), le64(&c[8..16])))
                        .collect();
                }
                Kind::Events => {
                    s.events = kvm_vcpu_events::read_from_bytes(body).map_err(|_| bad())?;
                }
                Kind::MpState => {
                    s.mp_state = kvm_mp_state::read_from_bytes(body).map_err(|_| bad())?;
                }
                Kind::DebugRegs => {
                    s.debugregs = kvm_debugregs::read_from_bytes(body).map_err(|_| bad())?;
                }
                Kind::PicMaster | Kind::PicSlave | Kind::Ioapic => {
                    let c = kvm_irqchip::read_from_bytes(body).map_err(|_| bad())?;
                    let want = match kind {
                        Kind::PicMaster => KVM_IRQCHIP_PIC_MASTER,
                        Kind::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
                        _ => KVM_IRQCHIP_IOAPIC,
                    };
                    if c.chip_id != want {
                        return Err(Error::State("irqchip id"));
                    }
                    s.irqchips.push(c);
                }
                Kind::Clock => {
                    s.clock = kvm_clock_data::read_from_bytes(body).map_err(|_| bad())?;
                    clock = true;
                }
                Kind::Progress => {
                    s.progress = Progress::read_from_bytes(body).map_err(|_| bad())?;
                    progress = true;
                }
            }
        }
        if !rest.is_empty() {
            return Err(Error::State("trailing bytes"));
        }
        if !(regs && sregs && fpu && progress && clock) {
            return Err(Error::State("missing section"));
        }
        Ok(s)
    }
}

/// The body of a fuzz target for [`VmState::decode`]: never panics on any input, and whatever
/// it accepts encodes to bytes it accepts again, with the same content. Returns whether `data`
/// was accepted.
pub fn fuzz_one(data: &[u8]) -> bool {
    match VmState::decode(data) {
        Ok(s) => {
            let again = VmState::decode(&s.encode()).expect("an encoded state decodes");
            assert_eq!(again.encode(), s.encode(), "encoding is stable");
            true
        }
        Err(_) => false,
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// `kvm_fpu`'s fields in order (416 bytes): it has no zerocopy derive.
fn fpu_bytes(f: &kvm_fpu) -> Vec<u8> {
    let mut v = Vec::with_capacity(416);
    for r in &f.fpr {
        v.extend_from_slice(r);
    }
    v.extend_from_slice(&f.fcw.to_le_bytes());
    v.extend_from_slice(&f.fsw.to_le_bytes());
    v.push(f.ftwx);
    v.push(f.pad1);
    v.extend_from_slice(&f.last_opcode.to_le_bytes());
    v.extend_from_slice(&f.last_ip.to_le_bytes());
    v.extend_from_slice(&f.last_dp.to_le_bytes());
    for x in &f.xmm {
        v.extend_from_slice(x);
    }
    v.extend_from_slice(&f.mxcsr.to_le_bytes());
    v.extend_from_slice(&f.pad2.to_le_bytes());
    v
}

fn fpu_from(b: &[u8]) -> Option<kvm_fpu> {
    if b.len() != 416 {
        return None;
    }
    let mut f = kvm_fpu::default();
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[i * 16..i * 16 + 16]);
    }
    f.fcw = u16::from_le_bytes([b[128], b[129]]);
    f.fsw = u16::from_le_bytes([b[130], b[131]]);
    f.ftwx = b[132];
    f.pad1 = b[133];
    f.last_opcode = u16::from_le_bytes([b[134], b[135]]);
    f.last_ip = le64(&b[136..144]);
    f.last_dp = le64(&b[144..152]);
    for (i, x) in f.xmm.iter_mut().enumerate() {
        x.copy_from_slice(&b[152 + i * 16..168 + i * 16]);
    }
    f.mxcsr = le32(&b[408..412]);
    f.pad2 = le32(&b[412..416]);
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_hostile_bytes() {
        let mut s = VmState::default();
        s.regs.rip = 0x1003;
        s.fpu.fcw = 0x37f;
        s.fpu.xmm[3][5] = 9;
        s.msrs = vec![(0x10, 12345), (0x277, 0x0007_0406_0007_0406)];
        s.progress.last = 77.into();
        for chip in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            s.irqchips.push(kvm_irqchip {
                chip_id: chip,
                ..Default::default()
            });
        }
        let bytes = s.encode();
        let d = VmState::decode(&bytes).expect("decode");
        assert_eq!(d.regs, s.regs);
        assert_eq!(d.fpu, s.fpu);
        assert_eq!(d.msrs, s.msrs);
        assert_eq!(d.progress, s.progress);
        assert_eq!(d.encode(), bytes);
        for len in [0, 15, 16, bytes.len() - 1] {
            assert!(
                VmState::decode(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(VmState::decode(&b).is_err(), "trailing byte");
        let mut b = bytes.clone();
        b[16] = 99;
        assert!(VmState::decode(&b).is_err(), "unknown kind");

        // Hostile bytes: truncated, flipped, random; never a panic.
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..5_000 {
            let mut m = bytes.clone();
            match i % 3 {
                0 => m.truncate(rnd() as usize % (m.len() + 1)),
                1 => {
                    let at = rnd() as usize % m.len();
                    m[at] ^= 1 << (rnd() % 8);
                }
                _ => {
                    let at = rnd() as usize % m.len();
                    m[at] = rnd() as u8;
                }
            }
            let _ = fuzz_one(&m);
        }
        assert!(fuzz_one(&bytes));
    }
}
