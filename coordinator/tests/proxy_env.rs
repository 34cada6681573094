//! `HTTP_PROXY`: registry traffic goes through the proxy the environment names, as with
//! skopeo and Hangar — for the command's own transfers, and for each worker through the
//! proxy of its own environment (how the fleet bench gives every worker its own link).

mod common;

use std::process::{Command, Stdio};

use common::fleet;
use common::{Env, index_digests, sha, skopeo_raw, text};
use hangar_loadtest::link::{self, LinkOptions};
use hangar_loadtest::seed::Format;
use hangar_loadtest::services::NatsProcess;

const LAYER: u64 = 2_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn registry_traffic_goes_through_the_proxy_the_environment_names() {
    let env = Env::new();
    let src = common::registry(&env.src.addr).await;
    let mut lines = Vec::new();
    for i in 0..2u64 {
        let repo = format!("proxied/app-{i}");
        common::push_image(
            &src,
            env.dir.path(),
            &repo,
            Some("v1"),
            Format::Oci,
            "amd64",
            (&[8100 + i], LAYER),
        )
        .await;
        lines.push(format!("{}/{repo}:v1", env.src.addr));
    }
    let list = env.write_list("list.txt", &lines);
    let opts = LinkOptions {
        rate: 200_000_000,
        delay: std::time::Duration::from_millis(1),
    };

    // The command's own transfers: every byte of both layers each way.
    let own = link::start(opts).await.expect("link");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["mirror", "--tls-verify=false", "-f"])
        .arg(&list)
        .args(["-d", &env.dst.addr, "-o"])
        .arg(env.path("f1.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("HTTP_PROXY", &own.url)
        .stdin(Stdio::null())
        .output()
        .expect("hangar-coord");
    assert!(out.status.success(), "{}", text(&out));
    let (up, down) = own.carried();
    assert!(down >= 2 * LAYER, "down {down}");
    assert!(up >= 2 * LAYER, "up {up}");
    for line in &lines {
        // Hangar lists a single source manifest in a destination index, digest preserved.
        let copied = skopeo_raw(&line.replace(&env.src.addr, &env.dst.addr)).expect("copied");
        let source = skopeo_raw(line).expect("source");
        assert_eq!(index_digests(&copied), vec![sha(&source)], "{line}");
    }

    // On the fleet: the worker's link carries the blobs; the coordinator, with no proxy,
    // only plans.
    let nats = NatsProcess::start().expect("nats-server");
    let theirs = link::start(opts).await.expect("link");
    let proxy = [("HTTP_PROXY", theirs.url.as_str())];
    let _worker = fleet::worker(&nats.url(), &env.path("w.log"), &[], &proxy);
    let out = Command::new(env!("CARGO_BIN_EXE_hangar-coord"))
        .args(["mirror", "--tls-verify=false", "-f"])
        .arg(&list)
        .args(["-d", &env.dst.addr, "--destination-project", "fleet"])
        .args(["--nats", &nats.url(), "-o"])
        .arg(env.path("f2.txt"))
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .stdin(Stdio::null())
        .output()
        .expect("hangar-coord");
    assert!(out.status.success(), "{}", text(&out));
    let (up, down) = theirs.carried();
    assert!(down >= 2 * LAYER, "down {down}");
    assert!(up >= 2 * LAYER, "up {up}");
    for (i, line) in lines.iter().enumerate() {
        let copied = skopeo_raw(&format!("{}/fleet/app-{i}:v1", env.dst.addr)).expect("copied");
        let source = skopeo_raw(line).expect("source");
        assert_eq!(index_digests(&copied), vec![sha(&source)], "{line}");
    }
}
