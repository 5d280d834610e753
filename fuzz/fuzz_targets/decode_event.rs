//! Any bytes from a bus: decoding never panics, and whatever decodes
//! re-encodes to an event that decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use purchase_saga::domain::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        let again = Event::decode(event.encode().as_bytes()).expect("an encoded event decodes");
        assert_eq!(again, event);
    }
});
