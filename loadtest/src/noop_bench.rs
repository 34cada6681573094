//! A re-run with nothing to do: the list mirrored once on loopback, then mirrored again and
//! validated through a delay proxy in front of each registry — the nightly run of a list
//! that has not changed. What it costs is round trips, so the rows say how many requests
//! each registry served per reference.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use crate::bench::{BenchSpec, run_measured};
use crate::proxy::{self, ProxyOptions};
use crate::services::RegistryProcess;

pub struct NoopRow {
    pub what: String,
    pub seconds: f64,
    pub refs: usize,
    /// Requests the source and the destination registries served during the run.
    pub requests: (usize, usize),
}

/// Requests in a registry's access log.
fn requests(reg: &RegistryProcess) -> usize {
    reg.log()
        .lines()
        .filter(|l| {
            [
                "\"GET ",
                "\"HEAD ",
                "\"PUT ",
                "\"POST ",
                "\"PATCH ",
                "\"DELETE ",
            ]
            .iter()
            .any(|m| l.contains(m))
        })
        .count()
}

pub async fn run(spec: &BenchSpec, source: &RegistryProcess) -> Result<Vec<NoopRow>> {
    let dest = RegistryProcess::start()?;
    let mut first = spec.mirror_command(&spec.list, &dest.addr);
    tokio::task::block_in_place(|| run_measured(&mut first))?;
    let opts = ProxyOptions {
        delay: spec.delay,
        ..Default::default()
    };
    let src_proxy = proxy::start("127.0.0.1:0", &spec.source, opts).await?;
    let dst_proxy = proxy::start("127.0.0.1:0", &dest.addr, opts).await?;
    let list = spec.workdir.join("list-noop.txt");
    let lines: Vec<String> = spec
        .lines
        .iter()
        .map(|l| l.replacen(&spec.source, &src_proxy.addr, 1))
        .collect();
    std::fs::write(&list, lines.join("\n") + "\n")?;
    let mut validate = Command::new(&spec.hangar);
    validate
        .args(["mirror", "validate", "--tls-verify=false", "-j"])
        .arg(spec.jobs.to_string())
        .args(["-d", &dst_proxy.addr, "-f"])
        .arg(&list)
        .arg("-o")
        .arg(spec.workdir.join("noop-validate-failed.txt"))
        .stdout(Stdio::null());
    let runs = [
        (
            "mirror (re-run)",
            spec.mirror_command(&list, &dst_proxy.addr),
        ),
        ("mirror validate", validate),
    ];
    let mut out = Vec::new();
    for (what, mut cmd) in runs {
        let before = (requests(source), requests(&dest));
        let (elapsed, _) = tokio::task::block_in_place(|| run_measured(&mut cmd))?;
        // The access log is written as requests end; give the last lines a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        out.push(NoopRow {
            what: what.to_owned(),
            seconds: elapsed.as_secs_f64(),
            refs: spec.lines.len(),
            requests: (requests(source) - before.0, requests(&dest) - before.1),
        });
    }
    Ok(out)
}

pub fn table(rows: &[NoopRow], delay: Duration) -> String {
    let mut s = format!(
        "| {} ms each way | references | wall s | source requests / ref | destination requests / ref |\n|---|---|---|---|---|\n",
        delay.as_millis()
    );
    for r in rows {
        let per = |n: usize| n as f64 / r.refs.max(1) as f64;
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
            r.what,
            r.refs,
            r.seconds,
            per(r.requests.0),
            per(r.requests.1)
        ));
    }
    s
}
