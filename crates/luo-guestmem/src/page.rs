//! Page sizes, backings and attributes: the small vocabulary of guest memory.

/// The base unit of conversions and attributes: 4 KiB, whatever backs the memory.
pub const UNIT: u64 = 4096;

/// The page size backing a guest memory object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB pages (a shmem memfd, or a KVM guest_memfd).
    Base4K,
    /// 2 MiB hugetlb pages.
    Huge2M,
    /// 1 GiB hugetlb pages.
    Huge1G,
}

impl PageSize {
    /// Every page size, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Base4K, PageSize::Huge2M, PageSize::Huge1G];

    /// Bytes in one page.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Base4K => UNIT,
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    /// The page size of `bytes`, if it is one of the three.
    pub fn from_bytes(bytes: u64) -> Option<PageSize> {
        PageSize::ALL.into_iter().find(|p| p.bytes() == bytes)
    }

    /// True for the hugetlb sizes.
    pub const fn is_huge(self) -> bool {
        !matches!(self, PageSize::Base4K)
    }

    /// The name used on command lines: `4k`, `2m`, `1g`.
    pub const fn name(self) -> &'static str {
        match self {
            PageSize::Base4K => "4k",
            PageSize::Huge2M => "2m",
            PageSize::Huge1G => "1g",
        }
    }
}

impl std::str::FromStr for PageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<PageSize, String> {
        match s.to_ascii_lowercase().as_str() {
            "4k" | "4096" => Ok(PageSize::Base4K),
            "2m" | "2mb" => Ok(PageSize::Huge2M),
            "1g" | "1gb" => Ok(PageSize::Huge1G),
            _ => Err(format!("unknown page size {s:?} (4k, 2m or 1g)")),
        }
    }
}

impl std::fmt::Display for PageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of file holds the guest's RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// A shmem memfd (4 KiB pages).
    Memfd,
    /// A hugetlb memfd (2 MiB or 1 GiB pages).
    Hugetlb,
    /// A KVM guest_memfd, bound to the VM that created it (4 KiB pages).
    GuestMemfd,
}

impl Backing {
    /// The descriptor's encoding.
    pub const fn to_raw(self) -> u32 {
        match self {
            Backing::Memfd => 0,
            Backing::Hugetlb => 1,
            Backing::GuestMemfd => 2,
        }
    }

    /// Decodes [`to_raw`](Self::to_raw).
    pub const fn from_raw(raw: u32) -> Option<Backing> {
        match raw {
            0 => Some(Backing::Memfd),
            1 => Some(Backing::Hugetlb),
            2 => Some(Backing::GuestMemfd),
            _ => None,
        }
    }

    /// True if `page` is a page size this backing can have.
    pub const fn allows(self, page: PageSize) -> bool {
        matches!(
            (self, page),
            (Backing::Memfd | Backing::GuestMemfd, PageSize::Base4K)
                | (Backing::Hugetlb, PageSize::Huge2M | PageSize::Huge1G)
        )
    }
}

/// Who may touch a page: the host too (shared), or only the guest (private).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    /// The host may map and access the page (the default).
    Shared,
    /// Only the guest may; the host must hold no mapping of it.
    Private,
}
