//! `227`/`229` parsers and rewriters: whatever parses rewrites, and the rewritten
//! line parses back to what was written in, with the rest of the line untouched.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use ftpgate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use ftpgate::protocol::rewrite::{rewrite_227, rewrite_229};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let to = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 50123);
    if let Ok(t) = find_pasv_tuple(data) {
        let out = rewrite_227(data, to).expect("a found tuple rewrites");
        let back = find_pasv_tuple(&out).expect("rewritten 227 parses");
        assert_eq!(back.addr, to);
        assert_eq!(&out[..t.span.start], &data[..t.span.start], "prefix kept");
    } else {
        let _ = rewrite_227(data, to);
    }
    if let Ok(p) = find_epsv_port(data) {
        let out = rewrite_229(data, 50123).expect("a found port rewrites");
        let back = find_epsv_port(&out).expect("rewritten 229 parses");
        assert_eq!(back.port, 50123);
        assert_eq!(&out[..p.span.start], &data[..p.span.start], "prefix kept");
    } else {
        let _ = rewrite_229(data, 1);
    }
});
