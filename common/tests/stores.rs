//! The log progress records against the real MongoDB-wire server of the local stack.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use urna_common::stores::LogCollections;
use urna_testkit::stack;

async fn open(collection: &str, group: &str) -> LogCollections {
    stack::require("MongoDB", &stack::mongo_url());
    LogCollections::open(
        &stack::mongo_url(),
        "urna_test",
        collection,
        group,
        "votes",
        "urna-common-tests",
    )
    .await
    .unwrap()
}

/// Two members raise their own partitions at once while a reader watches: no partition
/// ever goes back and both end exactly where their writer left them. (With one shared
/// `$max`-updated document per topic, FerretDB lost one writer's updates here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_on_disjoint_partitions_never_lose_or_undo_progress() {
    let collection = format!("progress_race_{}", uuid::Uuid::now_v7().simple());
    let store = open(&collection, "g").await;
    const STEPS: i64 = 200;
    let writer = |partitions: [i32; 3]| {
        let store = store.clone();
        tokio::spawn(async move {
            for step in 1..=STEPS {
                let next = partitions.iter().map(|&p| (p, step)).collect();
                store.raise_progress(&next).await.unwrap();
            }
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
            let mut regressions = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for (p, next) in store.read_progress().await.unwrap() {
                    let before = seen.insert(p, next).unwrap_or(0);
                    if next < before {
                        regressions.push((p, before, next));
                    }
                }
            }
            regressions
        })
    };
    let (a, b) = (writer([0, 1, 2]), writer([3, 4, 5]));
    a.await.unwrap();
    b.await.unwrap();
    done.store(true, Ordering::Relaxed);
    let regressions = reader.await.unwrap();
    let expected: BTreeMap<i32, i64> = (0..6).map(|p| (p, STEPS)).collect();
    assert_eq!(store.read_progress().await.unwrap(), expected);
    assert_eq!(regressions, vec![], "(partition, seen, then read)");
    store.progress.drop().await.unwrap();
}

/// `$max`: a late, lower offset (a zombie member's batch) does not move progress back;
/// another group's progress on the same collection is its own.
#[tokio::test]
async fn progress_only_rises_and_is_kept_per_group() {
    let collection = format!("progress_max_{}", uuid::Uuid::now_v7().simple());
    let store = open(&collection, "g").await;
    let other = open(&collection, "other").await;
    assert_eq!(store.read_progress().await.unwrap(), BTreeMap::new());
    store
        .raise_progress(&BTreeMap::from([(0, 10), (1, 4)]))
        .await
        .unwrap();
    store
        .raise_progress(&BTreeMap::from([(0, 7), (1, 5)]))
        .await
        .unwrap();
    other
        .raise_progress(&BTreeMap::from([(0, 99)]))
        .await
        .unwrap();
    assert_eq!(
        store.read_progress().await.unwrap(),
        BTreeMap::from([(0, 10), (1, 5)])
    );
    assert_eq!(
        other.read_progress().await.unwrap(),
        BTreeMap::from([(0, 99)])
    );
    store.progress.drop().await.unwrap();
}

/// Writers raising the same partition at once (a member that lost the partition and the
/// one that got it, for a moment): the highest wins and replays are no error. (`$max`
/// on one document ended at 6 of 8 here on FerretDB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_raises_of_one_partition_keep_the_highest() {
    let collection = format!("progress_upsert_{}", uuid::Uuid::now_v7().simple());
    let store = open(&collection, "g").await;
    let tasks: Vec<_> = (1..=8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store.raise_progress(&BTreeMap::from([(0, n)])).await?;
                store.raise_progress(&BTreeMap::from([(0, n)])).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        store.read_progress().await.unwrap(),
        BTreeMap::from([(0, 8)])
    );
    store.progress.drop().await.unwrap();
}

/// Passed marks are deleted at most once per `PRUNE_INTERVAL`, and then all of them: after
/// a burst of raises and one raise past the interval, each partition keeps one mark.
#[tokio::test]
async fn passed_marks_are_pruned_down_to_the_highest() {
    let collection = format!("progress_prune_{}", uuid::Uuid::now_v7().simple());
    let store = open(&collection, "g").await;
    for step in 1..=50 {
        store
            .raise_progress(&BTreeMap::from([(0, step), (1, step * 2)]))
            .await
            .unwrap();
    }
    tokio::time::sleep(urna_common::stores::PRUNE_INTERVAL).await;
    store
        .raise_progress(&BTreeMap::from([(0, 51)]))
        .await
        .unwrap();
    let marks = store
        .progress
        .count_documents(mongodb::bson::doc! { "of": "g|votes" })
        .await
        .unwrap();
    assert_eq!(marks, 2, "partition 0 at 51, partition 1 at 100");
    assert_eq!(
        store.read_progress().await.unwrap(),
        BTreeMap::from([(0, 51), (1, 100)])
    );
    store.progress.drop().await.unwrap();
}
