//! The committed cluster map as its readers see it: the map now, and a watch
//! that fires when it changes.
//!
//! The router, the snapshot server and the QUIC peer link only read the map;
//! they hold a [`MapView`] rather than the whole [`super::ControlPlane`], so
//! they run as well over a map the caller fixes ([`FixedMap`]: in-process
//! tests, which start no Raft).

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tstore_core::cluster_map::ClusterMap;

/// Reads the committed map.
#[derive(Clone)]
pub struct MapView {
    read: Arc<dyn Fn() -> Arc<ClusterMap> + Send + Sync>,
    version: watch::Receiver<u64>,
}

impl MapView {
    /// A view reading the map with `read`; `version` fires after every change.
    pub fn new(
        read: impl Fn() -> Arc<ClusterMap> + Send + Sync + 'static,
        version: watch::Receiver<u64>,
    ) -> Self {
        Self {
            read: Arc::new(read),
            version,
        }
    }

    /// The committed map (shared, not copied).
    pub fn map(&self) -> Arc<ClusterMap> {
        (self.read)()
    }

    /// Fires with the map version after every change.
    pub fn watch_version(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}

/// A map that changes only when its holder replaces it.
pub struct FixedMap {
    map: Arc<RwLock<Arc<ClusterMap>>>,
    version: watch::Sender<u64>,
}

impl FixedMap {
    pub fn new(map: ClusterMap) -> Self {
        let (version, _) = watch::channel(map.version);
        Self {
            map: Arc::new(RwLock::new(Arc::new(map))),
            version,
        }
    }

    /// A view of this map.
    pub fn view(&self) -> MapView {
        let map = self.map.clone();
        MapView::new(
            move || map.read().expect("fixed map lock").clone(),
            self.version.subscribe(),
        )
    }

    /// Replaces the map; every view's watch fires.
    pub fn set(&self, map: ClusterMap) {
        let version = map.version;
        *self.map.write().expect("fixed map lock") = Arc::new(map);
        self.version.send_replace(version);
    }
}
