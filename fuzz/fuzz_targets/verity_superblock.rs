//! The veritysetup superblock parser and the tree layout it implies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = drover_core::verity::Superblock::parse(data) {
        if let Ok(layout) = drover_core::verity::TreeLayout::new(&sb.params) {
            let _ = layout.tree_size();
        }
    }
});
