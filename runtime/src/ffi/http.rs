//! An HTTP request of a component, read from the C request, and the
//! callback that sends its response head.

use std::borrow::Cow;

use super::run::{
    common_from_c, wasm_rt_field, wasm_rt_request, wasm_rt_send_head, wasm_rt_send_trailers,
    Callbacks, Common,
};
use super::{c_array, c_str};
use crate::error::{Code, Error, Result};
use crate::http::{HeadSink, Request};

/// Converts the C request into a component's.
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
    let text = |p, what| -> Result<Cow<'a, str>> {
        let s = unsafe { c_str(p, what) }?;
        s.to_str()
            .map(Cow::Borrowed)
            .map_err(|_| Error::new(Code::InvalidArgument, format!("{what} is not UTF-8")))
    };
    let headers = unsafe { c_array(req.headers, req.nheaders, "headers") }?
        .iter()
        .map(|f| {
            Ok((
                Cow::Borrowed(unsafe { c_array(f.name, f.name_len, "header name") }?),
                Cow::Borrowed(unsafe { c_array(f.value, f.value_len, "header value") }?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let head = req.io.send_head.map(|f| {
        Box::new(ResponseCallbacks {
            head: Callbacks::new(req.io.ctx, f),
            trailers: req.io.send_trailers.map(|t| Callbacks::new(req.io.ctx, t)),
        }) as Box<dyn HeadSink>
    });
    Ok(Request {
        method: text(req.method, "method")?,
        scheme: text(req.scheme, "scheme")?,
        authority: text(req.authority, "authority")?,
        path_with_query: text(req.path_with_query, "path_with_query")?,
        headers,
        args,
        env,
        dirs,
        body,
        head,
        output,
        limits,
        reuse_scope: match req.reuse_scope.is_null() {
            true => Cow::Borrowed(""),
            false => text(req.reuse_scope, "reuse_scope")?,
        },
        allow_outbound: unsafe {
            c_array(req.allow_outbound, req.n_allow_outbound, "allow_outbound")
        }?
        .iter()
        .map(|&p| text(p, "an allow_outbound pattern"))
        .collect::<Result<_>>()?,
        reuse: match req.instance_reuse {
            0 => crate::limits::DEFAULT_INSTANCE_REUSE,
            n => n,
        },
    })
}

/// The callbacks a component's response head and trailers go through.
struct ResponseCallbacks {
    head: Callbacks<wasm_rt_send_head>,
    trailers: Option<Callbacks<wasm_rt_send_trailers>>,
}

/// `fields` as the C side takes them (valid as long as `fields`).
fn c_fields(fields: &[(&[u8], &[u8])]) -> Vec<wasm_rt_field> {
    fields
        .iter()
        .map(|(k, v)| wasm_rt_field {
            name: k.as_ptr(),
            name_len: k.len(),
            value: v.as_ptr(),
            value_len: v.len(),
        })
        .collect()
}

impl HeadSink for ResponseCallbacks {
    fn send_head(&mut self, status: u16, headers: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        let c = &self.head;
        c.on_own_thread()?;
        let fields = c_fields(headers);
        // SAFETY: see `Callbacks`; the fields outlive the call.
        match unsafe { (c.f)(c.ctx, i32::from(status), fields.as_ptr(), fields.len()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::other(
                "the server refused the response head",
            )),
        }
    }

    fn send_trailers(&mut self, trailers: &[(&[u8], &[u8])]) -> std::io::Result<()> {
        let Some(c) = &self.trailers else {
            return Ok(());
        };
        c.on_own_thread()?;
        let fields = c_fields(trailers);
        // SAFETY: as for the head.
        match unsafe { (c.f)(c.ctx, fields.as_ptr(), fields.len()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::other(
                "the server refused the response trailers",
            )),
        }
    }
}
