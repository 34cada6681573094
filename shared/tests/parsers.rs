//! Property tests over every parser of outside input: image lists and references,
//! manifests and indexes, the archive index, OSV records, tar layers, package databases
//! (dpkg, apk, Python metadata, rpmdb) and version strings. Whatever the bytes, a parser
//! answers with a value or an error — never a panic — and what it accepts holds together.

use bytes::Bytes;
use hangar_shared::archive::ArchiveIndex;
use hangar_shared::digest::Digest;
use hangar_shared::imagelist::{ImageList, LineKind};
use hangar_shared::manifest::{Manifest, RawManifest};
use hangar_shared::reference::{ImageRef, MAX_NAME_LEN};
use hangar_shared::scan::layers::Files;
use hangar_shared::scan::osv::Database;
use hangar_shared::scan::version::{Scheme, compare};
use hangar_shared::scan::{Cancel, Limits, apk, dpkg, python, rpm};
use proptest::prelude::*;

/// Text made mostly of the characters these formats care about, so cases get past the
/// first check often enough to exercise the rest.
fn name_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9._:@/#\\- \t\u{feff}\u{e9}]{0,80}").expect("regex")
}

fn json_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::string::string_regex(r#"[{}\[\]":,0-9a-z. \-]{0,200}"#).expect("regex"),
        // A manifest or index skeleton with arbitrary field values.
        (name_like(), any::<i64>(), name_like()).prop_map(|(media, size, digest)| format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","manifests":[{{"mediaType":"{media}","digest":"{digest}","size":{size}}}],"config":{{"digest":"{digest}","size":{size}}},"layers":[]}}"#
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn image_lists_never_panic_and_keep_line_numbers(text in proptest::collection::vec(name_like(), 0..20)) {
        let joined = text.join("\n");
        let list = ImageList::parse(&joined);
        let lines = joined.lines().count();
        for e in &list.entries {
            prop_assert!(e.line_no >= 1 && e.line_no <= lines.max(1));
            if let LineKind::Default(r) = &e.kind {
                let bom = r.registry.starts_with('\u{feff}');
                prop_assert!(!bom, "a byte-order mark in {}", r.registry);
            }
        }
        for w in &list.warnings {
            prop_assert!(w.line_no >= 1 && w.line_no <= lines.max(1));
        }
    }

    #[test]
    fn references_are_valid_or_refused(input in name_like()) {
        if let Ok(r) = ImageRef::parse(&input) {
            prop_assert!(hangar_shared::reference::validate_registry(&r.registry).is_ok());
            prop_assert!(r.registry.len() + r.repository().len() < MAX_NAME_LEN + 2);
            prop_assert!(!r.repository().contains(".."));
            prop_assert!(!r.repository().contains('#'));
            // What is printed parses back to the same image.
            let again = ImageRef::parse(&r.to_string()).expect("round trip");
            prop_assert_eq!(again, r);
        }
    }

    #[test]
    fn digests_parse_or_fail(input in "[a-z0-9:]{0,80}") {
        if let Ok(d) = input.parse::<Digest>() {
            prop_assert_eq!(d.to_string().parse::<Digest>().expect("round trip"), d);
        }
    }

    #[test]
    fn manifests_parse_or_fail(text in json_like()) {
        let bytes = Bytes::from(text.into_bytes());
        if let Ok(raw) = RawManifest::from_bytes(bytes.clone(), None) {
            // A document that parses keeps its exact bytes, and so its digest.
            prop_assert_eq!(&raw.bytes, &bytes);
            prop_assert_eq!(raw.digest.clone(), Digest::of(&bytes));
            if let Ok(Manifest::Index(i)) = raw.parse() {
                prop_assert!(i.manifests.len() < 100_000);
            }
        }
        let wrong = Digest::of(b"something else");
        prop_assert!(RawManifest::from_bytes(bytes, Some(&wrong)).is_err());
    }

    #[test]
    fn archive_indexes_parse_or_fail(text in json_like()) {
        let _ = ArchiveIndex::parse(text.as_bytes(), "index.json");
    }

    #[test]
    fn package_databases_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), text in json_like()) {
        let _ = dpkg::parse("var/lib/dpkg/status", &body);
        let _ = apk::parse("lib/apk/db/installed", &body);
        let _ = python::parse("usr/lib/python3/site-packages/x.dist-info/METADATA", &body);
        let _ = rpm::parse("var/lib/rpm/rpmdb.sqlite", &body);
        let stanza = format!("Package: {text}\nStatus: install ok installed\nVersion: {text}\nSource: {text}\n\n");
        let _ = dpkg::parse("var/lib/dpkg/status", stanza.as_bytes());
        let apk_entry = format!("P:{text}\nV:{text}\no:{text}\n\n");
        let _ = apk::parse("lib/apk/db/installed", apk_entry.as_bytes());
    }

    #[test]
    fn tar_layers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut files = Files::new(Limits::default(), Cancel::default());
        files.apply("layer", &body[..]);
        let mut gz = vec![0x1f, 0x8b];
        gz.extend_from_slice(&body);
        files.apply("gz-layer", &gz[..]);
    }

    #[test]
    fn osv_records_parse_or_fail(text in json_like(), body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Database::from_bytes(text.as_bytes(), "record.json");
        let _ = Database::from_bytes(&body, "db.zip");
    }

    #[test]
    fn versions_compare_or_refuse(a in "[0-9a-z.~^+:_-]{0,24}", b in "[0-9a-z.~^+:_-]{0,24}") {
        for scheme in [Scheme::Dpkg, Scheme::Rpm, Scheme::Apk, Scheme::Pep440, Scheme::Semver] {
            if let (Some(x), Some(y)) = (compare(scheme, &a, &b), compare(scheme, &b, &a)) {
                prop_assert_eq!(x, y.reverse(), "{:?} {} {}", scheme, a, b);
            }
        }
    }
}
