//! Configuration loading and validation on arbitrary YAML: errors, never panics.
#![no_main]

use ftpgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = Config::from_yaml(text) {
        if let Ok(valid) = loaded.config.validate() {
            // A valid config names at least one listener.
            assert!(!valid.all_listeners().is_empty());
        }
    }
});
