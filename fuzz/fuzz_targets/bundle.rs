//! A delta bundle (`drover delta`) as `droverctl update FILE` opens it,
//! before the index's signature is checked: the header, the index body,
//! the list of frames held, and every frame decompressed and hashed.
//! (`Bundle::open` reads a file; each input is written to one in
//! /dev/shm first.)
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use drover_update_agent::delta::Bundle;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("drover-fuzz-bundle-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    std::fs::write(p, data).expect("writing the input");
    let opened = Bundle::open(p);
    // The bundle keeps the file open; the name goes now (nothing is left
    // behind in /dev/shm when the fuzzer stops).
    std::fs::remove_file(p).expect("removing the input");
    match opened {
        // Not a bundle: only when the magic is not there.
        Ok(None) => assert!(!data.starts_with(drover_core::blocks::BUNDLE_MAGIC)),
        Ok(Some(b)) => {
            // The index as stored is what the file holds after the header.
            assert_eq!(&data[12..12 + b.index_bytes.len()], &b.index_bytes[..]);
        }
        Err(_) => {}
    }
});
