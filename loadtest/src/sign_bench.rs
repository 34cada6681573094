//! Signatures per second: `hangar-coord sign` over the seeded list (every index and platform
//! digest), with a fresh key, then `sign validate` over the same list.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::bench::BenchSpec;

pub struct SignRun {
    pub step: &'static str,
    pub seconds: f64,
    pub signatures: usize,
}

fn run(cmd: &mut Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

pub fn bench(spec: &BenchSpec) -> Result<Vec<SignRun>> {
    let work = &spec.workdir;
    let pass = work.join("bench-pass.txt");
    std::fs::write(&pass, "bench-passphrase")?;
    let prefix = work.join("bench-key");
    run(Command::new(&spec.hangar)
        .args(["generate-sigstore-key", "-y", "-p"])
        .arg(&prefix)
        .arg("--passphrase-file")
        .arg(&pass))?;
    let jobs = spec.jobs.to_string();
    let (seconds, out) = run(Command::new(&spec.hangar)
        .args(["sign", "--tls-verify=false", "-j", &jobs, "-f"])
        .arg(&spec.list)
        .arg("-p")
        .arg(prefix.with_extension("key"))
        .arg("--passphrase-file")
        .arg(&pass)
        .arg("-o")
        .arg(work.join("sign-failed.txt")))?;
    let signed = out.matches("] Signed [").count();
    let mut rows = vec![SignRun {
        step: "sign",
        seconds,
        signatures: signed,
    }];
    let (seconds, out) = run(Command::new(&spec.hangar)
        .args(["sign", "validate", "--tls-verify=false", "-j", &jobs, "-f"])
        .arg(&spec.list)
        .arg("-k")
        .arg(prefix.with_extension("pub"))
        .arg("-r")
        .arg(work.join("sign-report.json"))
        .arg("-o")
        .arg(work.join("validate-failed.txt")))?;
    let passed = out.matches("PASS: [").count();
    if passed != spec.lines.len() {
        bail!(
            "sign validate passed {passed} of {} images",
            spec.lines.len()
        );
    }
    rows.push(SignRun {
        step: "sign validate",
        seconds,
        signatures: signed,
    });
    Ok(rows)
}

pub fn table(rows: &[SignRun]) -> String {
    let mut s = String::from("| step | signatures | wall s | per second |\n|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} |\n",
            r.step,
            r.signatures,
            r.seconds,
            r.signatures as f64 / r.seconds
        ));
    }
    s
}
