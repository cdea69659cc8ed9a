//! The Linux kernel's own liveupdate selftests (`tools/testing/selftests/liveupdate`, built
//! dynamic on the host) through the preload library against a real luod, with `luoctl reboot`
//! between the two stages of the two-stage programs: the host-side mirror of the VM scenario
//! `scripts/vm.d/scenarios/selftests.sh`. See `common/selftests.rs`.

mod common;

use common::selftests::{
    Check, Outcome, SUITE, SUITE_AFTER_REBOOT, TWO_STAGE, available, parse_suite, run_through_luod,
};

fn check(name: &str, outcome: Outcome) -> Check {
    Check {
        name: name.to_owned(),
        outcome,
    }
}

/// The KTAP parser on a sample with noise: harness diagnostics, a plan, kernel messages
/// (with and without `\r`), a result line behind a printk timestamp, a skip, a failure, and
/// lines that only look like results.
#[test]
fn parse_suite_reads_ktap_results() {
    let sample = "TAP version 13\n\
        1..5\n\
        # Starting 5 tests from 1 test cases.\n\
        #  RUN           liveupdate_device.basic_open_close ...\n\
        #            OK  liveupdate_device.basic_open_close\n\
        ok 1 liveupdate_device.basic_open_close\r\n\
        [    1.234567] liveupdate: session 'x' created\r\n\
        #  RUN           liveupdate_device.exclusive_open ...\n\
        # liveupdate.c:90:exclusive_open:Expected 0 (0) > self->fd2 (3)\n\
        #      FAIL      liveupdate_device.exclusive_open\n\
        not ok 2 liveupdate_device.exclusive_open\n\
        [   12.5] ok 3 liveupdate_device.preserve_memfd\r\n\
        #      SKIP      /dev/liveupdate does not exist\n\
        ok 4 liveupdate_device.preserve_many_sessions # SKIP /dev/liveupdate does not exist\n\
        okay 5 not a result\n\
        ok 12abc not a result either\n\
        # ok 6 a diagnostic, not a result\n\
        not ok 5 liveupdate_device.preserve_many_files # exit=1\n\
        # FAILED: 2 / 5 tests passed.\n\
        # Totals: pass:2 fail:2 xfail:0 xpass:0 skip:1 error:0\n";
    assert_eq!(
        parse_suite("liveupdate", sample),
        vec![
            check(
                "liveupdate/liveupdate_device.basic_open_close",
                Outcome::Pass
            ),
            check("liveupdate/liveupdate_device.exclusive_open", Outcome::Fail),
            check("liveupdate/liveupdate_device.preserve_memfd", Outcome::Pass),
            check(
                "liveupdate/liveupdate_device.preserve_many_sessions",
                Outcome::Skip
            ),
            check(
                "liveupdate/liveupdate_device.preserve_many_files",
                Outcome::Fail
            ),
        ]
    );
    assert_eq!(
        parse_suite("x", "ok 1 # SKIP no device\n"),
        vec![check("x/1", Outcome::Skip)]
    );
    assert!(parse_suite("x", "no results here\n[ 0.1] nor here\r\n").is_empty());
    assert_eq!(
        [Outcome::Pass, Outcome::Fail, Outcome::Skip].map(|o| o.to_string()),
        ["pass", "fail", "skip"]
    );
}

/// All five selftests pass through luod: the single-boot suite's 15 cases, the four two-stage
/// programs' stage 1, a `luoctl reboot`, their stage 2, and the suite's 15 cases again.
#[test]
fn kernel_selftests_pass_through_luod() {
    let test = "kernel_selftests_pass_through_luod";
    if !available(test) {
        return;
    }
    let run = run_through_luod();
    let names: Vec<&str> = run.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        run.checks.len(),
        38,
        "expected 38 checks, got {}: {names:#?}\n{}",
        run.checks.len(),
        run.log()
    );
    let failures = run.failures();
    assert!(
        failures.is_empty(),
        "the kernel's selftests through luod: not every check passed:\n{failures}"
    );

    // The order of the whole run.
    let cases: Vec<&str> = names[..15]
        .iter()
        .map(|n| {
            n.strip_prefix(&format!("{SUITE}/"))
                .unwrap_or_else(|| panic!("{n}"))
        })
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|c| format!("{SUITE}/{c}")).collect();
    for stage in ["1", "2"] {
        expected.extend(TWO_STAGE.iter().map(|p| format!("{p}/stage-{stage}")));
    }
    expected.extend(cases.iter().map(|c| format!("{SUITE_AFTER_REBOOT}/{c}")));
    assert_eq!(names, expected, "{}", run.log());
    assert!(
        cases.contains(&"liveupdate_device.preserve_many_sessions"),
        "{cases:?}"
    );
}
