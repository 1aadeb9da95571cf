//! HTTP helpers every door and the server API share: refusals, reading the token, and the
//! origin checks and CORS of the browser-facing doors. Leaves: they know no door.

mod admit;
mod body;
mod cors;
mod errors;
mod token;

pub(crate) use admit::{admit, admit_user};
pub(crate) use body::{BodyError, read_body};
pub(crate) use cors::{check_upgrade_origin, cors};
pub(crate) use errors::{ApiError, error_response};
pub(crate) use token::{auth_error_response, bearer, request_claims, request_token};
