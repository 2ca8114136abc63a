//! Any text as a configuration file: an error or a config, never a panic.
#![no_main]

use atlas::AtlasConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AtlasConfig::from_yaml(text, "fuzz.yaml");
    }
});
