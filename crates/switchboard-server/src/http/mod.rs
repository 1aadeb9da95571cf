//! HTTP helpers every door and the server API share: refusals, reading the token, and the
//! origin checks and CORS of the browser-facing doors. Leaves: they know no door.

mod cors;
mod errors;
mod token;

pub(crate) use cors::cors;
pub(crate) use errors::{ApiError, error_response};
pub(crate) use token::{auth_error_response, bearer, request_token};
