//! Upkeep of files shared in place by `fsd upload-file`: they are the
//! user's own files, so they may change under us. The store already refuses
//! to read one whose size or modification time moved; this watcher notices
//! within a second and withdraws it, so peers stop being sent to us for
//! bytes that no longer match the hashes, and the log says so once.

use crate::engine::Engine;
use crate::pieces::swarm::Swarm;
use crate::store::Source;
use fileshare_protocol::messages::tracker::StopShare;
use std::sync::Arc;
use std::time::Duration;

/// How often shared-in-place files are checked: one `stat` each.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Attempts at telling the trackers, which may be briefly unreachable.
const STOP_SHARE_ATTEMPTS: u32 = 6;

/// Checks every in-place file until the daemon stops (the task ends with
/// the engine's token; [`Engine::start`] starts it).
pub(super) async fn watch(engine: Arc<Engine>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let in_place: Vec<Arc<Swarm>> = engine
            .registry
            .all()
            .into_iter()
            .filter(|s| matches!(s.file.source, Source::InPlace { .. }))
            .collect();
        if in_place.is_empty() {
            continue;
        }
        let changed = engine
            .tasks
            .blocking(move || {
                in_place
                    .into_iter()
                    .filter_map(|s| s.file.check_source().err().map(|e| (s, e.to_string())))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for (swarm, why) in changed {
            withdraw(&engine, &swarm, &why).await;
        }
    }
}

/// Stops serving a changed file at once, then tells the trackers.
async fn withdraw(engine: &Arc<Engine>, swarm: &Arc<Swarm>, why: &str) {
    let id = swarm.file.id;
    match engine.registry.get(&id) {
        Some(current) if Arc::ptr_eq(&current, swarm) => {}
        // Already replaced or removed by someone else.
        _ => return,
    }
    engine.registry.remove(&id);
    swarm.cancel.cancel();
    let group = swarm.file.group.clone();
    let name = swarm.file.meta.name.clone();
    tracing::warn!(group = %group, file = %name, "{why}; no longer sharing it");
    if let Err(e) = engine.with_store(move |s| s.remove(&id)).await {
        tracing::debug!(file = %name, "cannot remove the store entry: {e:#}");
    }
    engine.tracker.invalidate(Some(&group));
    engine.announce_now.notify_one();
    let retries = engine.clone();
    engine.tasks.spawn("stop-share", async move {
        let engine = retries;
        let mut delay = Duration::from_millis(500);
        for _ in 0..STOP_SHARE_ATTEMPTS {
            // Shared again meanwhile (a fresh upload-file): leave it be.
            let again = engine
                .registry
                .all()
                .iter()
                .any(|s| s.file.group == group && s.file.meta.name == name);
            if again {
                return;
            }
            let stop = StopShare {
                session: engine.tracker.session,
                group: group.clone(),
                name: name.clone(),
            };
            match engine.tracker.client.call(stop).await {
                Ok(()) => return,
                Err(e) if e.code().is_some() => {
                    tracing::debug!(file = %name, "tracker refused stop-share: {e:#}");
                    return;
                }
                Err(e) => tracing::debug!(file = %name, "stop-share failed, will retry: {e:#}"),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    });
}
