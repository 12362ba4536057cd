//! Reading a partition table and the slots from arbitrary disk bytes, as
//! the boot stage does from a damaged disk: errors, never panics.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dev = Cursor::new(data.to_vec());
    if let Ok(t) = drover_core::PartitionTable::read(&mut dev, Path::new("fuzz")) {
        if let Ok(s) = drover_core::Slots::from_table(t, drover_core::SlotId::A) {
            let _ = s.next_boot();
        }
    }
});
