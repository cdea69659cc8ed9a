# The kernel's own liveupdate selftests (tools/testing/selftests/liveupdate, built static from
# the source package): the single-boot suite, the two-stage programs' stage 1 (each leaves a
# child holding its sessions), one real kexec, their stage 2, and the single-boot suite again
# in the kexec'd kernel.
description="the kernel's liveupdate selftests: single-boot suite, then the two-stage programs across a kexec"

two_stage="luo_kexec_simple luo_multi_session luo_stress_sessions luo_stress_files"

# The single-boot suite (kselftest harness): its exit status, and none of its tests skipped
# (a skip exits 0 when others pass).
suite() {
    /selftests/liveupdate >/tmp/liveupdate.out 2>&1
    rc=$?
    cat /tmp/liveupdate.out
    [ $rc = 0 ] || return $rc
    grep -q '^# Totals: pass:[0-9]* fail:0 xfail:0 xpass:0 skip:0 error:0$' /tmp/liveupdate.out || {
        echo "liveupdate: a test failed or skipped"
        return 1
    }
}

stage_1() {
    check liveupdate suite || return 1
    for t in $two_stage; do
        check "$t-stage-1" "/selftests/$t" --stage 1 || return 1
    done
}

stage_2() {
    for t in $two_stage; do
        check "$t-stage-2" "/selftests/$t" --stage 2 || return 1
    done
    check liveupdate-after-kexec suite
}
