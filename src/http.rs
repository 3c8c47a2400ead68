//! The HTTP server: one [`router`] that tests drive without a socket, and
//! [`serve`], which runs it on the daemon's listeners until shutdown.
//!
//! Called by `daemon`. The only module that turns our types into HTTP
//! responses (see `http/health.rs` for the readiness JSON).
//!
//! Invariant: shutdown stops accepting at once and gives in-flight requests
//! at most the drain timeout; it never waits unbounded on a slow client.

mod health;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::Health;

/// What handlers can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub health: Arc<Health>,
}

/// One function builds the whole app, so tests drive it without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::live))
        .route("/ready", get(health::ready))
        .route("/actuator/health", get(health::ready))
        .with_state(state)
}

/// Serves `router` on every listener until `shutdown` fires, then drains
/// in-flight requests for at most `drain`.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = router.clone();
        let stop = shutdown.clone();
        servers.spawn(async move {
            let addr = listener.local_addr().ok();
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = result {
                warn!(?addr, %err, "HTTP listener failed");
            }
        });
    }
    shutdown.cancelled().await;
    let drained = tokio::time::timeout(drain, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            ?drain,
            "in-flight requests did not finish in time; closing them"
        );
        servers.abort_all();
    } else {
        info!("HTTP drained");
    }
}
