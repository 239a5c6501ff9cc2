//! The timely-dataflow peer runs the keyed-sum workload to completion and
//! reports one JSON line that the comparison runner can read.

use std::process::Command;

use spate_bench::compare::{extract_json_number, find_json_line};

fn run(records: u64, workers: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peer-timely"))
        .args([
            "--records",
            &records.to_string(),
            "--workers",
            &workers.to_string(),
            "--keys",
            "1000",
            "--json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run peer-timely: {e}"));
    assert!(out.status.success(), "peer-timely failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn peer_reports_its_throughput() {
    for workers in [1, 2] {
        let stdout = run(200_000, workers);
        let line = find_json_line(&stdout).unwrap_or_else(|| panic!("no JSON line in {stdout:?}"));
        assert_eq!(extract_json_number(line, "records"), Some(200_000.0), "{line}");
        assert_eq!(extract_json_number(line, "workers"), Some(workers as f64), "{line}");
        assert_eq!(extract_json_number(line, "keys"), Some(1000.0), "{line}");
        let rps = extract_json_number(line, "records_per_s").unwrap_or(0.0);
        assert!(rps > 0.0, "{line}");
    }
}

#[test]
fn bad_arguments_fail_naming_the_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_peer-timely"))
        .args(["--records", "ten"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run peer-timely: {e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--records") && err.contains("ten"), "{err}");
}
