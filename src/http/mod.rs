//! The HTTP API: the router, the error type, the extractors and the middleware. Handlers parse,
//! call the `Gateway`, and shape the answer; they hold no business logic and no SQL.

mod campaigns;
mod dashboard;
pub mod error;
mod extract;
mod guard;
mod listings;
mod observe;
mod openapi;
mod ops;
pub mod serve;

use std::{sync::Arc, time::Duration};

use axum::{
    Router, middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::{gateway::Gateway, health::Probe, memo::Memo, telemetry};
use error::ApiError;
use guard::{Limits, Token};
use ops::Ops;

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The HTTP layer's settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Required as a bearer token by `POST /campaigns` when set.
    pub admin_token: Option<SecretString>,
    /// Required as a bearer token by redeems when set.
    pub api_token: Option<SecretString>,
    /// Campaign API requests in flight at once; more are refused with 503.
    pub concurrency_limit: usize,
    /// Longest a campaign API request may take, once its body is read, before it is answered 503.
    pub request_timeout: Duration,
    /// Longest a campaign API request's body may take to arrive, before it is answered 408.
    pub body_read_timeout: Duration,
}

/// The routers to serve: on one address, or the operator's endpoints on an address of their own.
pub struct Routers {
    /// The campaign API, and the operator's endpoints unless they have an address of their own.
    pub public: Router,
    /// The operator's endpoints, when they have an address of their own.
    pub ops: Option<Router>,
}

/// The API's routers; with `separate_ops`, the operator's endpoints apart.
pub fn routers(
    gateway: Arc<Gateway>,
    probe: Arc<Probe>,
    settings: &HttpSettings,
    separate_ops: bool,
) -> Routers {
    let api = api_router(gateway.clone(), settings).merge(dashboard_router(
        gateway,
        probe.clone(),
        settings,
    ));
    let ops = ops_router(probe);
    if separate_ops {
        Routers {
            public: finished(api),
            ops: Some(finished(ops)),
        }
    } else {
        Routers {
            public: finished(api.merge(ops)),
            ops: None,
        }
    }
}

fn api_router(gateway: Arc<Gateway>, settings: &HttpSettings) -> Router {
    let limits = Limits::new(
        settings.concurrency_limit,
        settings.request_timeout,
        settings.body_read_timeout,
    );
    let admin_token = Token::from_setting(exposed(&settings.admin_token));
    if admin_token.is_none() {
        tracing::warn!(
            "VG_ADMIN_TOKEN is not set: ANYONE who can reach this port can create campaigns"
        );
    }
    let api_token = Token::from_setting(exposed(&settings.api_token));
    Router::new()
        .route(
            "/campaigns",
            guarded(
                post(campaigns::create_campaign).get(listings::list_campaigns),
                admin_token.clone(),
            ),
        )
        .route(
            "/campaigns/{id}/redemptions",
            guarded(get(listings::list_redemptions), admin_token.clone()),
        )
        .route(
            "/campaigns/{id}/redemptions/{user}",
            // The user's own question: open as redeems are, and the admin token serves too.
            guarded(
                get(listings::get_redemption),
                api_token.clone().map(|api| api.or(admin_token.clone())),
            ),
        )
        .route("/campaigns/{id}", get(campaigns::get_campaign))
        .route(
            "/campaigns/{id}/close",
            guarded(post(campaigns::close_campaign), admin_token.clone()),
        )
        .route(
            "/campaigns/{id}/redeem",
            guarded(post(campaigns::redeem_voucher), api_token),
        )
        .route_layer(limits)
        .with_state(gateway)
}

/// The live page and its data, for the people watching the sale; with `VG_ADMIN_TOKEN` set they
/// need it, as a bearer token or as the password a browser prompts for.
fn dashboard_router(gateway: Arc<Gateway>, probe: Arc<Probe>, settings: &HttpSettings) -> Router {
    let routes = Router::new()
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/data", get(dashboard::data));
    let routes = match Token::from_setting(exposed(&settings.admin_token)) {
        Some(token) => routes.route_layer(middleware::from_fn_with_state(
            token,
            guard::require_token_or_password,
        )),
        None => routes,
    };
    routes.with_state(dashboard::Dashboard::new(
        gateway,
        probe,
        telemetry::metrics::handle(),
    ))
}

fn ops_router(probe: Arc<Probe>) -> Router {
    Router::new()
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .with_state(Ops {
            probe,
            metrics: telemetry::metrics::handle(),
            page: Arc::new(Memo::new(Duration::from_secs(1))),
        })
        .route_layer(middleware::from_fn_with_state(
            ops::Pace::default(),
            ops::paced,
        ))
        // Added after the pace: a liveness probe never waits.
        .route("/health", get(ops::health))
}

/// The answers for what no route takes, and the stack every request passes: one stack,
/// outermost first, so each route is wrapped once (each `Router::layer` call would box every
/// route again).
fn finished(router: Router) -> Router {
    router
        .fallback(async || ApiError::NotFound)
        .method_not_allowed_fallback(async || ApiError::MethodNotAllowed)
        .layer(
            ServiceBuilder::new()
                .layer(observe::ObserveLayer)
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

fn exposed(token: &Option<SecretString>) -> Option<&str> {
    token.as_ref().map(|token| token.expose_secret())
}

/// The route with a bearer token required, when one is configured.
fn guarded<S>(route: MethodRouter<S>, token: Option<Token>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    match token {
        Some(token) => {
            route.route_layer(middleware::from_fn_with_state(token, guard::require_token))
        }
        None => route,
    }
}

/// A bug must cost one request a 500 problem, not the connection.
fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::Internal.into_response()
}
