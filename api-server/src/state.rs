//! Shared application state handed to every handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::crypto::Keyring;
use crate::infra::Infra;
use crate::metrics::Metrics;

pub struct AppStateInner {
    pub config: Config,
    pub infra: Infra,
    pub keyring: Keyring,
    pub metrics: Metrics,
    pub runs: Arc<crate::runs::Runtime>,
    pub started_at: Instant,
    shutting_down: AtomicBool,
    /// Last `lastUsedAt` write per credential id, so it is written at most once a minute.
    touched: Mutex<HashMap<String, Instant>>,
    storage_check: Mutex<Option<(Instant, bool)>>,
}

pub type AppState = Arc<AppStateInner>;

impl AppStateInner {
    /// State with the process run adapter.
    pub fn new(config: Config, infra: Infra) -> AppState {
        let adapter = Arc::new(crate::infra::run_adapter::ProcessAdapter::new(
            config.runner_bin.as_deref(),
            &config.data_dir,
        ));
        Self::with_adapter(config, infra, adapter, Default::default())
    }

    /// State with the run adapter chosen at boot and the sidecar metrics it updates.
    pub fn with_adapter(
        config: Config,
        infra: Infra,
        adapter: Arc<dyn crate::infra::run_adapter::RunAdapter>,
        sidecar_metrics: crate::metrics::SidecarMetrics,
    ) -> AppState {
        let keyring = Keyring::new(&config.keys);
        let runs = Arc::new(crate::runs::Runtime::new(adapter));
        Arc::new(AppStateInner {
            config,
            infra,
            keyring,
            metrics: Metrics::new(sidecar_metrics),
            runs,
            started_at: Instant::now(),
            shutting_down: AtomicBool::new(false),
            touched: Mutex::new(HashMap::new()),
            storage_check: Mutex::new(None),
        })
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether `lastUsedAt` of `id` is due for a write (at most once a minute per credential).
    pub fn should_touch(&self, id: &str) -> bool {
        let mut map = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match map.get(id) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
            _ => {
                if map.len() > 100_000 {
                    map.clear();
                }
                map.insert(id.to_string(), now);
                true
            }
        }
    }

    /// The storage health probe, cached for 10 s.
    pub async fn storage_healthy(&self) -> bool {
        if let Some((at, ok)) = *self.storage_check.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < Duration::from_secs(10) {
                return ok;
            }
        }
        let ok = match self.infra.storage.check().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "storage health check failed");
                false
            }
        };
        *self.storage_check.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
        ok
    }
}
