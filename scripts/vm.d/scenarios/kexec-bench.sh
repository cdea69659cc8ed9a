# `luo-bench kexec` (crates/luo-vmtest, kexec_bench.rs): the same workloads across a real kexec
# through luod and straight through /dev/liveupdate, each timed within its boot and printed as
# LUO-BENCH lines. Shapes: one session of one patterned memfd (luo.size, default 1G) and the
# kernel's stress sizes (2,000 sessions, 500 files in one). Five boots:
#   1 luod, large: preserve, forward (timed), kexec
#   2 luod restores (timed to the first and to every retrieve), checked; direct, large: kexec
#   3 direct retrieve (timed), checked; luod, many: preserve, forward (timed), kexec
#   4 luod restores (timed), checked; direct, many: kexec
#   5 direct retrieve (timed), checked
description="luod's share of a kexec, against a program using /dev/liveupdate directly"
memory=3G
timeout=1200

size() {
    s=$(param luo.size)
    echo "${s:-1G}"
}

bench() {
    luo-vmtest kexec-bench --size "$(size)" --kexec luo-kexec "$@"
}

stage_1() {
    bench --stage luod-before --shape large
}

stage_2() {
    check bench-luod-large-after bench --stage luod-after --shape large || return 1
    bench --stage direct-before --shape large
}

stage_3() {
    check bench-direct-large-after bench --stage direct-after --shape large || return 1
    bench --stage luod-before --shape many
}

stage_4() {
    check bench-luod-many-after bench --stage luod-after --shape many || return 1
    bench --stage direct-before --shape many
}

stage_5() {
    check bench-direct-many-after bench --stage direct-after --shape many
}
