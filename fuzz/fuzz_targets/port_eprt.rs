//! `PORT`/`EPRT` argument parsers and formatters: whatever parses formats and parses
//! back to the same address.
#![no_main]

use std::net::SocketAddr;

use ftpgate::protocol::addr::{format_eprt_arg, format_pasv_tuple, parse_eprt_arg, parse_port_arg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_port_arg(data) {
        let again = parse_port_arg(format_pasv_tuple(a).as_bytes()).expect("round trip");
        assert_eq!(again, a);
    }
    if let Ok(a) = parse_eprt_arg(data) {
        let again = parse_eprt_arg(format_eprt_arg(a).as_bytes()).expect("round trip");
        assert_eq!(again, a);
        let _: SocketAddr = again;
    }
});
