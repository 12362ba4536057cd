//! QEMU life-cycle tests. Not built yet (issues 4 and 6): they need the
//! image builder and the boot stage first.
