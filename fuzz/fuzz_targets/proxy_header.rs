//! PROXY protocol header parser (v1 text, v2 binary): never panics, never claims more
//! bytes than it was given, and a header parses the same whatever follows it (a
//! client's first FTP bytes) and needs more bytes on every strict prefix.
#![no_main]

use ftpgate::proxy_protocol::parse_proxy_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, len))) = parse_proxy_header(data) else {
        return;
    };
    assert!(len > 0 && len <= data.len(), "length within the input");
    let exact = &data[..len];
    let again = parse_proxy_header(exact).expect("the header alone parses");
    assert_eq!(again, Some((header, len)), "trailing bytes change nothing");
    // Every strict prefix of a valid header is incomplete, never a different header:
    // the reader stops at the first `Some`, so an early one would eat too little.
    for cut in [0, 1, len / 2, len - 1] {
        if cut < len {
            assert!(
                !matches!(parse_proxy_header(&exact[..cut]), Ok(Some(_))),
                "prefix of {cut} bytes parsed as a header"
            );
        }
    }
});
