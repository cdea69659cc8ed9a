# The kernel's stress sizes through luod (crates/luo-vmtest, kexec_bench.rs): 2,000 sessions of
# one small memfd each and one session of 500 memfds, preserved through luod, forwarded into
# kernel sessions (`Control::kexec` with no_exec) and carried across a real kexec; the next
# kernel's luod restores them all, every file is retrieved through it and checked, every
# session finished, and then the kernel holds none of them.
description="2,000 sessions and 500 files in one session cross a kexec through luod"
timeout=600

stage_1() {
    # Returns only on failure: it runs luo-kexec -e itself while it holds the sessions.
    luo-vmtest kexec-bench --stage luod-before --shape many --kexec luo-kexec
}

stage_2() {
    check luod-stress-after luo-vmtest kexec-bench --stage luod-after --shape many
}
