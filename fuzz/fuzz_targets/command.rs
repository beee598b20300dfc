//! The command classifier and its log redaction: no panic on any line; the verb and
//! argument are slices of the line; a redacted line never contains a PASS argument.
#![no_main]

use ftpgate::protocol::command::{find_synch, parse_command, redact_for_log, Verb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = find_synch(data);
    let redacted = redact_for_log(data);
    if let Ok(cmd) = parse_command(data) {
        assert!(!cmd.verb_token.is_empty());
        assert!(cmd.arg.len() < data.len());
        assert_eq!(Verb::from_token(cmd.verb_token), cmd.verb);
        if cmd.verb == Verb::Pass {
            assert!(redacted.ends_with("****"), "PASS argument redacted: {redacted}");
        }
    }
});
