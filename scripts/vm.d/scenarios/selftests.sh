# The kernel's own liveupdate selftests (tools/testing/selftests/liveupdate, built static from
# the source package): the single-boot suite, the two-stage programs' stage 1 (each leaves a
# child holding its sessions), one real kexec, their stage 2, and the single-boot suite again
# in the kexec'd kernel.
description="the kernel's liveupdate selftests: single-boot suite, then the two-stage programs across a kexec"

two_stage="luo_kexec_simple luo_multi_session luo_stress_sessions luo_stress_files"

stage_1() {
    check liveupdate /selftests/liveupdate || return 1
    for t in $two_stage; do
        check "$t-stage-1" "/selftests/$t" --stage 1 || return 1
    done
}

stage_2() {
    for t in $two_stage; do
        check "$t-stage-2" "/selftests/$t" --stage 2 || return 1
    done
    check liveupdate-after-kexec /selftests/liveupdate
}
