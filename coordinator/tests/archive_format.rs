//! The archive format: an archive from an independent writer loads, ours follow the
//! documented layout and field order, and damaged archives fail clearly, tagging nothing.

mod common;

use common::archive::*;
use common::*;
use hangar_loadtest::seed::{self, Format};

#[tokio::test]
async fn an_archive_written_by_an_independent_writer_loads() {
    let env = Env::new();
    let archive = env.path("python.zip");
    let made = make_archive("good", &archive, "docker.io/library/pyimg", "v1");
    assert!(
        hangar(&["archive", "verify", &s(&archive)])
            .status
            .success()
    );
    let out = load(&env, &archive, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let raw = skopeo_raw(&format!("{}/library/pyimg:v1", env.dst.addr)).expect("loaded");
    assert_eq!(
        index_digests(&raw),
        vec![made["manifest"].as_str().unwrap_or_default().to_owned()]
    );
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/pyimg:v1", env.dst.addr))
        .arg(format!("oci:{}:x", s(&env.path("oci"))))
        .output()
        .expect("skopeo");
    assert!(copied.status.success(), "{}", text(&copied));
}

/// Key order of every JSON object in `v`, recursively, as `path: k1,k2,…` lines (python
/// keeps document order, serde_json here would sort).
fn key_orders(raw: &[u8]) -> String {
    let script = r#"
import json, sys
def walk(o, path, out):
    if isinstance(o, dict):
        out.append(path + ": " + ",".join(o.keys()))
        for k, v in o.items(): walk(v, path + "." + k, out)
    elif isinstance(o, list):
        for v in o: walk(v, path + "[]", out)
out = []
walk(json.loads(sys.stdin.read()), "$", out)
print("\n".join(sorted(set(out))))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw)
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn written_archives_follow_the_documented_layout_and_field_order() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_multiarch(&src, env.dir.path(), "library/f", "1", Format::Oci, 80).await;
    let list = env.write_list("l.txt", &[format!("{}/library/f:1", env.src.addr)]);
    let archive = env.path("f.zip");
    assert!(save(&env, &list, &archive, &[]).status.success());
    let script = r#"
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    assert i.compress_type == 0, i.filename
    assert not i.filename.endswith("/"), i.filename
sys.stdout.buffer.write(z.read("index.json"))
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &s(&archive)])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    let raw = o.stdout;
    assert!(
        !raw.contains(&b'\n'),
        "single-line JSON, as Go's json.Marshal writes"
    );
    let orders = key_orders(&raw);
    for expected in [
        "$: list,version,time",
        "$.list[]: source,tag,archList,osList,images",
        "$.list[].images[]: arch,os,mediaType,layers,config,digest",
    ] {
        assert!(
            orders.lines().any(|l| l == expected),
            "{expected} in\n{orders}"
        );
    }
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(index["version"], "v1.2.0");
    let time = index["time"].as_str().unwrap_or_default();
    assert!(
        time.len() >= 20 && time.as_bytes()[10] == b'T',
        "RFC 3339: {time}"
    );
    let image = &index["list"][0];
    assert_eq!(image["source"], format!("{}/library/f", env.src.addr));
    let spec = &image["images"][0];
    let hex = spec["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    let layout = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); sys.stdout.write(z.read(sys.argv[2]+'/index.json').decode()+'\\n'+z.read(sys.argv[2]+'/oci-layout').decode())",
            &s(&archive),
            &hex,
        ])
        .output()
        .expect("python3");
    let layout = String::from_utf8_lossy(&layout.stdout).to_string();
    let (idx, oci) = layout.split_once('\n').expect("two entries");
    assert_eq!(oci, r#"{"imageLayoutVersion":"1.0.0"}"#);
    assert!(
        idx.starts_with(r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:"#),
        "{idx}"
    );
}

#[tokio::test]
async fn damaged_archives_fail_clearly_and_tag_nothing() {
    let env = Env::new();
    let src = registry(&env.src.addr).await;
    push_image(
        &src,
        env.dir.path(),
        "library/d",
        Some("1"),
        Format::Docker,
        "amd64",
        (&[90, 91], 50_000),
    )
    .await;
    let list = env.write_list("l.txt", &[format!("{}/library/d:1", env.src.addr)]);
    let good = env.path("good.zip");
    assert!(save(&env, &list, &good, &[]).status.success());
    let bytes = std::fs::read(&good).expect("archive");
    let dest_ref = format!("{}/library/d:1", env.dst.addr);

    // Truncated.
    let truncated = env.path("truncated.zip");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let out = load(&env, &truncated, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a valid zip file"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("truncated.zip"), "{}", text(&out));

    // A layer whose bytes do not match its digest (a flipped byte inside the entry).
    let layer = seed::write_layer(env.dir.path(), 91, 50_000)
        .expect("layer")
        .digest;
    let name = format!("share/sha256/{}", layer.hex());
    let offset = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile,struct\nz=zipfile.ZipFile(sys.argv[1]); i=z.getinfo(sys.argv[2]); f=open(sys.argv[1],'rb'); f.seek(i.header_offset); h=f.read(30); n,e=struct.unpack('<HH',h[26:30]); print(i.header_offset+30+n+e)",
            &s(&good),
            &name,
        ])
        .output()
        .expect("python3");
    let offset: usize = String::from_utf8_lossy(&offset.stdout)
        .trim()
        .parse()
        .expect("offset");
    let mut flipped = bytes.clone();
    flipped[offset + 100] ^= 0xff;
    let corrupt = env.path("corrupt.zip");
    std::fs::write(&corrupt, &flipped).expect("write");
    let out = load(&env, &corrupt, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&name),
        "the entry is named: {}",
        text(&out)
    );
    assert!(!tag_exists(&dest_ref), "nothing tagged after a bad blob");
    let v = hangar(&["archive", "verify", &s(&corrupt)]);
    assert!(!v.status.success());
    assert!(text(&v).contains(&name), "{}", text(&v));
    // `sync` onto it does not carry the damaged entry forward under a fresh CRC of its
    // own: it fails naming the entry, and the archive is left as it was.
    let out = hangar(&[
        "sync",
        "--tls-verify=false",
        "-f",
        &s(&list),
        "-d",
        &s(&corrupt),
        "-o",
        &s(&env.path("sync-failed.txt")),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&name) && text(&out).contains("does not match its CRC-32"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&corrupt).expect("still there"), flipped);

    // Two entries named `index.json`: which one a reader takes differs between zip
    // libraries (Go's takes the first, the zip crate the last), so it is refused.
    let twice = env.path("twice.zip");
    std::fs::copy(&good, &twice).expect("copy");
    let appended = std::process::Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'a'); z.writestr('index.json','{\"version\":\"v1.2.0\",\"list\":[]}'); z.close()",
            &s(&twice),
        ])
        .status()
        .expect("python3");
    assert!(appended.success());
    let out = load(&env, &twice, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("twice.zip") && text(&out).contains("more than one entry named"),
        "{}",
        text(&out)
    );
    assert!(
        !tag_exists(&dest_ref),
        "nothing tagged from an ambiguous archive"
    );

    // Unsafe entry names.
    for (mode, shown) in [("traversal", "a/../../evil"), ("absolute", "/etc/evil")] {
        let bad = env.path(&format!("{mode}.zip"));
        make_archive(mode, &bad, "docker.io/library/evil", "1");
        let out = load(&env, &bad, &[]);
        assert!(!out.status.success(), "{mode}");
        assert!(text(&out).contains(shown), "{mode}: {}", text(&out));
        assert!(text(&out).contains("unsafe entry name"), "{}", text(&out));
        assert!(!tag_exists(&format!("{}/library/evil:1", env.dst.addr)));
    }

    // An index naming a blob the archive does not hold.
    let missing = env.path("missing.zip");
    let made = make_archive("missing", &missing, "docker.io/library/gap", "1");
    let out = load(&env, &missing, &[]);
    assert!(!out.status.success());
    let layer_hex = made["layer"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        text(&out).contains(&format!("share/sha256/{layer_hex}")),
        "{}",
        text(&out)
    );
    assert!(!tag_exists(&format!("{}/library/gap:1", env.dst.addr)));
    assert!(
        !hangar(&["archive", "verify", &s(&missing)])
            .status
            .success()
    );

    // A manifest past the 4 MiB a registry's is read up to: refused by name, nothing tagged.
    let big = env.path("bigmanifest.zip");
    let made = make_archive("bigmanifest", &big, "docker.io/library/big", "1");
    let out = load(&env, &big, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let manifest_hex = made["manifest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        text(&out).contains(&manifest_hex) && text(&out).contains("too large for a manifest"),
        "{}",
        text(&out)
    );
    assert!(!tag_exists(&format!("{}/library/big:1", env.dst.addr)));

    // An index version older than v1.2.0.
    let old = env.path("old.zip");
    let script = "import sys,zipfile\nz=zipfile.ZipFile(sys.argv[1],'w')\nz.writestr('index.json','{\"version\":\"v1.1.0\",\"time\":\"2024-01-01T00:00:00Z\"}')";
    let o = std::process::Command::new("python3")
        .args(["-c", script, &s(&old)])
        .output()
        .expect("python3");
    assert!(o.status.success());
    let out = hangar(&["archive", "ls", &s(&old)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("this tool does not support index version v1.1.0"),
        "{}",
        text(&out)
    );
}
