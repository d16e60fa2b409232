//! A CGI request of a command module, read from the C request.

use super::c_text;
use super::run::{common_from_c, wasm_rt_request, Common};
use crate::cgi::Request;
use crate::error::Result;

/// Converts the C request into a command module's.
///
/// # Safety
/// `req` is valid as the header describes.
pub(super) unsafe fn request_from_c<'a>(req: &'a wasm_rt_request) -> Result<Request<'a>> {
    let Common {
        body,
        output,
        args,
        env,
        dirs,
        limits,
    } = unsafe { common_from_c(req) }?;
    let entry = if req.entry_point.is_null() {
        None
    } else {
        Some(unsafe { c_text(req.entry_point, "entry point") }?)
    };
    Ok(Request {
        args,
        env,
        dirs,
        entry,
        body,
        output,
        limits,
    })
}
