//! Any bytes as a `POST /orders` body: the parser never panics, accepted
//! bodies satisfy the documented limits and refusals are 400 or 422 with a
//! reason (`parse_order_body_checked` asserts both).
#![no_main]

use libfuzzer_sys::fuzz_target;
use purchase_saga::adapters::http::body::parse_order_body_checked;

fuzz_target!(|data: &[u8]| {
    let _ = parse_order_body_checked(data);
});
