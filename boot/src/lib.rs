//! `drover-boot`, the early-boot stage. Not built yet (issue 4): slot
//! selection itself already lives in [`drover_core::selection`] and
//! [`drover_core::Slots::select_for_boot`], which this stage will call.
