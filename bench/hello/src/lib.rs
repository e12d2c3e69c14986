//! A hello-world `wasi:http` handler: the ceiling of a stock component runtime,
//! for the `verify_http` comparison.

#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "wasi:http/proxy@0.2.12",
    path: "../../wit",
    generate_all,
});

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

export!(Hello);

impl exports::wasi::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(b"hello");
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
