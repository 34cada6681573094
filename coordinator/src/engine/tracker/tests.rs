//! The tracker's own life cycle: places, planning outcomes, settled tasks, abandoning.

use hangar_shared::error::{Error, FailureClass};
use hangar_shared::task::{Event, EventKind};

use super::testkit::{Harness, blob, job, kinds, platform, tagged};
use super::{Extras, ImageResult};
use crate::engine::planner::Planned;

fn three_images() -> Harness {
    Harness::new(
        (1..=3)
            .map(|n| job(&format!("src.io/lib/a:{n}"), &format!("dst.io/proj/a:{n}")))
            .collect(),
        Extras::default(),
    )
}

#[tokio::test]
async fn abandon_reports_every_unfinished_image_failed_as_cancelled() {
    let mut h = three_images();
    h.add(0, Planned::Skip("no platform".into())).await;
    h.add(1, tagged("2", vec![platform("amd64", &[blob("config")])]))
        .await;
    assert_eq!(kinds(&h.take()), ["blob"]);
    assert!(!h.tracker.is_finished());
    h.tracker.abandon("interrupted", &mut h.finished);
    assert!(h.tracker.is_finished());
    let results: Vec<_> = h.tracker.results().map(|(_, r)| r.cloned()).collect();
    assert!(matches!(results[0], Some(ImageResult::Skipped(_))));
    for r in &results[1..] {
        let Some(ImageResult::Failed(e)) = r else {
            panic!("failed: {r:?}");
        };
        assert_eq!(e.class, FailureClass::Cancelled);
        assert_eq!(e.message, "interrupted");
    }
    assert_eq!(h.finished.0.len(), 3, "each image reported once");
}

#[tokio::test]
async fn an_image_gives_its_place_back_as_it_finishes() {
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let mut h = three_images();
    for (i, planned) in [
        tagged("1", vec![platform("amd64", &[blob("config")])]),
        Planned::Skip("no platform".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let place = places.clone().try_acquire_owned().expect("a free place");
        h.tracker.hold_place(i, Some(place));
        h.add(i, planned).await;
    }
    assert_eq!(
        places.available_permits(),
        1,
        "the skipped image gave it back"
    );
    h.settle().await;
    assert_eq!(places.available_permits(), 2, "so did the copied one");
}

#[tokio::test]
async fn a_planning_failure_or_skip_finishes_the_image_without_tasks() {
    let mut h = three_images();
    h.add(0, Planned::Skip("no platform".into())).await;
    h.tracker
        .add_plan(1, Err(Error::not_found("gone")), &mut h.finished)
        .await
        .expect("add_plan");
    assert!(h.take().is_empty());
    assert_eq!(h.finished.class(1), Some(FailureClass::NotFound));
    assert!(!h.tracker.is_finished(), "image 3 is still to plan");
}

#[tokio::test]
async fn a_settled_task_ignores_repeated_events_and_describe_forgets_it() {
    let mut h = three_images();
    h.add(0, tagged("1", vec![platform("amd64", &[blob("config")])]))
        .await;
    let blobs = h.take();
    let id = blobs[0].id;
    let what = h.tracker.describe(id).expect("in flight");
    assert!(what.starts_with("blob sha256:"), "{what}");
    h.event(Event::about(
        &blobs[0],
        EventKind::Started {
            worker: "w".into(),
            attempt: 1,
        },
    ))
    .await;
    assert!(h.take().is_empty(), "a notice settles nothing");
    h.ok(&blobs[0]).await;
    assert_eq!(h.tracker.describe(id), None);
    assert_eq!(kinds(&h.take()), ["manifest"]);
    // At-least-once delivery: the same outcome again, and a late failure.
    h.ok(&blobs[0]).await;
    h.fail(&blobs[0], FailureClass::Network, true).await;
    assert!(h.take().is_empty());
    assert!(h.finished.0.is_empty());
    assert_eq!(
        h.tracker.stats.blobs_copied, 1,
        "a repeated outcome is not counted again"
    );
}
