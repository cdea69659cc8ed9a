# The kernel's own liveupdate selftests (tools/testing/selftests/liveupdate, built static from
# the source package): the single-boot suite, the two-stage programs' stage 1 (each leaves a
# child holding its sessions), one real kexec, their stage 2, and the single-boot suite again
# in the kexec'd kernel. The oracle scenario runs the same steps among its own.
description="the kernel's liveupdate selftests: single-boot suite, then the two-stage programs across a kexec"

two_stage="luo_kexec_simple luo_multi_session luo_stress_sessions luo_stress_files"

# `suite NAME`: the single-boot suite (kselftest harness), its output between LUO-OUTPUT lines
# (the oracle's host side reads each case from them); fails on its exit status, or when one of
# its tests skipped (a skip exits 0 when others pass).
suite() {
    /selftests/liveupdate >/tmp/liveupdate.out 2>&1
    rc=$?
    echo "LUO-OUTPUT-BEGIN $1"
    cat /tmp/liveupdate.out
    echo "LUO-OUTPUT-END $1"
    [ $rc = 0 ] || return $rc
    grep -q '^# Totals: pass:[0-9]* fail:0 xfail:0 xpass:0 skip:0 error:0$' /tmp/liveupdate.out || {
        echo "liveupdate: a test failed or skipped"
        return 1
    }
}

selftests_stage_1() {
    check liveupdate suite liveupdate || return 1
    for t in $two_stage; do
        check "$t/stage-1" "/selftests/$t" --stage 1 || return 1
    done
}

selftests_stage_2() {
    for t in $two_stage; do
        check "$t/stage-2" "/selftests/$t" --stage 2 || return 1
    done
    check liveupdate-after-kexec suite liveupdate-after-kexec
}

stage_1() { selftests_stage_1; }
stage_2() { selftests_stage_2; }
