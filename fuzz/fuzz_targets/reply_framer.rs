//! The multi-line reply framer and code parser over an arbitrary reply stream: no
//! panic, an error leaves the framer's state unchanged.
#![no_main]

use ftpgate::protocol::reply::{parse_code, ReplyFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut framer = ReplyFramer::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        let _ = parse_code(line);
        let before = framer.in_block();
        if framer.classify(line).is_err() {
            assert_eq!(framer.in_block(), before, "state unchanged on error");
        }
    }
});
