//! The benches' code paths on tiny lists, so that they do not rot between measurements:
//! each bench runs against real registries (and, for the fleet, real NATS and Garage) and
//! prints every row it promises. Their numbers mean nothing at this size; BENCHMARKS.md
//! has the real ones.

use std::path::PathBuf;
use std::process::Command;

/// A list of two small images (layers well under the planner's inline limit, so the
/// fleet's configs ride in tasks), 5 ms each way on the proxied runs.
const TINY: [&str; 12] = [
    "--images",
    "2",
    "--layers",
    "1",
    "--layer-size",
    "1000",
    "--shared-layers",
    "1",
    "--shared-layer-size",
    "3000",
    "--delay-ms",
    "5",
];

fn hangar_coord() -> PathBuf {
    let coord = PathBuf::from(env!("CARGO_BIN_EXE_hangar-loadtest")).with_file_name("hangar-coord");
    assert!(
        coord.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        coord.display()
    );
    coord
}

/// `hangar-loadtest bench` with `args` on the tiny list: its standard output, once it
/// exited 0.
fn bench(args: &[&str]) -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin");
    let path = format!("{venv}:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-loadtest"))
        .arg("bench")
        .arg("--hangar")
        .arg(hangar_coord())
        .args(TINY)
        .args(args)
        .env("PATH", path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run hangar-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The row of a markdown table whose cells start with `cells`, split into its cells.
fn row<'a>(out: &'a str, cells: &[&str]) -> Vec<&'a str> {
    out.lines()
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .find(|c| c.len() >= cells.len() && c[..cells.len()] == *cells)
        .unwrap_or_else(|| panic!("no row {cells:?} in:\n{out}"))
}

fn seconds(cell: &str) -> f64 {
    cell.parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not seconds"))
}

/// Each round of a rounds report and its median, checked against the rounds' own ratios.
fn rounds(out: &str, what: &str, expected: usize) {
    let report: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{what}, rounds: {expected} ")))
        .take(expected + 2)
        .collect();
    assert_eq!(report.len(), expected + 2, "no report of {what} in:\n{out}");
    let mut ratios: Vec<f64> = report[1..=expected]
        .iter()
        .map(|l| {
            let (hangar, rest) = l
                .split_once(": ")
                .and_then(|(_, r)| r.split_once(" s, "))
                .unwrap();
            let (raw, ratio) = rest.split_once(" s, ").unwrap();
            let ratio: f64 = ratio.trim_end_matches('x').parse().unwrap();
            // Each printed to two places: the ratio lies within what they round from.
            let (raw, hangar) = (seconds(raw), seconds(hangar));
            let low = (raw - 0.005) / (hangar + 0.005) - 0.005;
            let high = (raw + 0.005) / (hangar - 0.005).max(0.001) + 0.005;
            assert!((low..=high).contains(&ratio), "{l}");
            ratio
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let median: f64 = report[expected + 1]
        .trim()
        .strip_prefix("median ratio: ")
        .and_then(|m| m.strip_suffix('x'))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no median in {:?}", report[expected + 1]));
    let middle = match expected % 2 {
        1 => ratios[expected / 2],
        _ => (ratios[expected / 2 - 1] + ratios[expected / 2]) / 2.0,
    };
    assert!((median - middle).abs() < 0.011, "{report:?}");
}

#[test]
fn the_mirror_bench_measures_four_tools_on_both_networks_and_its_rounds() {
    // One image of the two an index (seeded the same every run): the floor copies both kinds.
    let out = bench(&["--rounds", "3", "--multiarch", "0.7"]);
    // The shared layer mounted into the second repository; a manifest for the first image,
    // the index and its two platforms for the second.
    assert!(
        out.contains("copy floor: 1 mounts, 4 manifests pushed\n"),
        "{out}"
    );
    for network in ["loopback", "5 ms each way"] {
        for tool in ["hangar", "skopeo", "raw", "floor"] {
            seconds(row(&out, &[network, tool])[2]);
        }
        for bound in ["raw bound", "copy floor"] {
            rounds(&out, &format!("mirror, {network}, vs the {bound}"), 3);
        }
    }
}

#[test]
fn the_archive_bench_saves_loads_and_measures_its_rounds() {
    // One image of the two an index of two platforms: the floor reads four manifests.
    let out = bench(&["--archive", "--rounds", "2", "--multiarch", "0.7"]);
    for tool in [
        "hangar save (zip)",
        "hangar save (zip) --cache, gathered first",
        "hangar save (zip) via a 5 ms proxy",
        "skopeo → oci:",
        "skopeo → dir:",
        "raw save (GET → files)",
        "save floor (manifests, GET → files)",
        "hangar load (zip)",
        "raw load (GET → PUT)",
    ] {
        seconds(row(&out, &[tool])[1]);
    }
    let per_byte = |tool: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tool}: ")))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no bytes written per byte for {tool} in:\n{out}"))
    };
    assert!(
        per_byte("hangar save (zip)") < per_byte("hangar save (zip) --cache, gathered first"),
        "a streamed save writes less than one that gathers into a cache first:\n{out}"
    );
    assert!(out.contains("save floor: 4 manifests read\n"), "{out}");
    for bound in ["raw bound", "save floor"] {
        rounds(&out, &format!("save (zip), streamed, vs the {bound}"), 2);
    }
}

#[test]
fn the_noop_bench_counts_requests_per_reference() {
    let out = bench(&["--noop"]);
    for tool in ["mirror (re-run)", "mirror validate"] {
        let r = row(&out, &[tool]);
        assert_eq!(r[1], "2", "two references: {r:?}");
        seconds(r[2]);
    }
}

#[test]
fn the_fleet_bench_runs_each_size_through_links_of_its_own() {
    // It fails on its own if the links carried less than the list.
    let out = bench(&["--fleet", "--workers", "1,2"]);
    for mode in ["embedded", "1 worker", "2 workers"] {
        seconds(row(&out, &[mode])[1]);
    }
    assert_eq!(row(&out, &["2 workers"])[6], "10", "tasks of the list");
}
