//! placeholder

use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::Behaviour;

pub(super) fn answer(_b: &Behaviour, _n: usize, _body: &Value) -> Response {
    axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
}
