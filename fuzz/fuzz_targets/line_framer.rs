//! The control-line framer: any bytes, any limit. A line found ends in LF within the
//! buffer and the limit; trimming never grows it.
#![no_main]

use ftpgate::protocol::line::{find_line, trim_eol, LineError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max, buf)) = data.split_first() else {
        return;
    };
    let max = usize::from(max) * 8 + 1;
    let mut rest = buf;
    loop {
        match find_line(rest, max) {
            Ok(Some(n)) => {
                assert!(n >= 1 && n <= rest.len() && n <= max);
                let line = &rest[..n];
                assert_eq!(line.last(), Some(&b'\n'));
                assert!(trim_eol(line).len() < n);
                rest = &rest[n..];
            }
            Ok(None) => {
                assert!(!rest.contains(&b'\n') || rest.len() > max);
                break;
            }
            Err(LineError::TooLong { max: m }) => {
                assert_eq!(m, max);
                break;
            }
        }
    }
});
