//! Where every capability's routes come together into the public API, and the metrics listener's own.
//! The only module that knows every capability; none of them knows it.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

use crate::error::ApiError;
use crate::http::{browser, observe, ops};
use crate::state::App;

/// The public API router.
pub fn api(app: Arc<App>) -> Router {
    Router::new()
        .merge(ops::routes())
        .merge(crate::accounts::routes())
        .merge(crate::attachments::routes())
        .merge(crate::calls::routes())
        .merge(crate::contacts::routes())
        .merge(crate::keys::routes())
        .merge(crate::messages::routes())
        .merge(crate::push::http::routes())
        .merge(crate::delivery::websocket::routes())
        .merge(crate::delivery::provisioning::routes())
        .merge(crate::demo::routes(app.config.demo_enabled))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(app.config.max_request_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        // Outermost: the request id's span covers the request log line, and refused preflights get headers too.
        .layer(middleware::from_fn_with_state(app.clone(), browser::browser))
        .with_state(app)
}

/// The metrics router, served on its own listener.
pub fn metrics(app: Arc<App>) -> Router {
    ops::metrics_routes().with_state(app)
}
