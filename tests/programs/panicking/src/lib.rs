//! A stand-in for the sigma-keys component that panics when a request's path
//! ends in `/panic` (in its `wasi:http` handler) or `/panic-decide` (in
//! `gateway.decide`), runs away in `decide` on `/spin-decide` and grows its
//! memory without end on `/grow-decide`, and answers 200 `ok` otherwise. The
//! host must turn each into a 500 for that request and keep serving.

#![allow(clippy::panic, clippy::unwrap_used)]
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "service",
    path: "../../../wit",
    generate_all,
});

use exports::sigma::api_keys::{auth, gateway, keys};
mod wit {
    pub use super::exports::sigma::api_keys::keys::{
        Actor, CreatedKey, Error, EventPage, KeyRecord, Permission, RolledKey,
    };
}
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Program;

export!(Program);

impl exports::wasi::http::incoming_handler::Guest for Program {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.ends_with("/panic") {
            panic!("this test program panics on purpose");
        }
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().unwrap();
        stream.blocking_write_and_flush(b"ok").unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}

impl keys::Guest for Program {
    fn list(_: String) -> Result<Vec<wit::KeyRecord>, wit::Error> {
        panic!("typed call")
    }
    fn get(_: String, _: String) -> Result<wit::KeyRecord, wit::Error> {
        panic!("typed call")
    }
    fn create(
        _: String,
        _: String,
        _: Vec<wit::Permission>,
        _: Option<u64>,
        _: wit::Actor,
    ) -> Result<wit::CreatedKey, wit::Error> {
        panic!("typed call")
    }
    fn roll(_: String, _: String, _: u32, _: wit::Actor) -> Result<wit::RolledKey, wit::Error> {
        panic!("typed call")
    }
    fn deactivate(_: String, _: String, _: wit::Actor) -> Result<wit::KeyRecord, wit::Error> {
        panic!("typed call")
    }
    fn delete(_: String, _: String, _: wit::Actor) -> Result<(), wit::Error> {
        panic!("typed call")
    }
    fn events(
        _: String,
        _: Option<String>,
        _: Option<String>,
        _: u32,
    ) -> Result<wit::EventPage, wit::Error> {
        panic!("typed call")
    }
}

impl auth::Guest for Program {
    fn verify(_: String, _: wit::Permission) -> Result<auth::Verified, wit::Error> {
        panic!("typed call")
    }
    fn authorize(_: String, _: String, _: String) -> Result<auth::Verified, wit::Error> {
        panic!("typed call")
    }
    fn required_permission(_: String, _: String) -> Result<wit::Permission, wit::Error> {
        panic!("typed call")
    }
}

impl gateway::Guest for Program {
    fn decide(head: gateway::RequestHead) -> gateway::Decided {
        if head.path_with_query.ends_with("/panic-decide") {
            panic!("this test program panics on purpose");
        }
        if head.path_with_query.ends_with("/spin-decide") {
            // Runs away on purpose: only the epoch deadline ends it.
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if head.path_with_query.ends_with("/grow-decide") {
            // Asks for more memory than any instance may have.
            let mut chunks = Vec::new();
            loop {
                chunks.push(std::hint::black_box(vec![1u8; 16 << 20]));
            }
        }
        gateway::Decided {
            route: gateway::RouteClass::Resource,
            decision: gateway::Decision::Handle(64 * 1024),
        }
    }
    fn upstream_failed(_: gateway::UpstreamFailure) -> gateway::Reply {
        panic!("typed call")
    }
    fn hop_by_hop_headers() -> Vec<String> {
        panic!("typed call")
    }
}
