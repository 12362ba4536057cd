//! The security-version floor in a real software TPM (`swtpm` on
//! loopback, started and stopped by the test): made on first use, raised
//! and never lowered, correct on a TPM whose counters ran before (a new
//! counter starts at the highest value any counter had), and whole again
//! after a first use cut short.

#[path = "../../test-support/swtpm.rs"]
mod swtpm;

use drover_core::measured::{floor, tpm};
use swtpm::Swtpm;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::NvPublicBuilder;
use tss_esapi::Context;

fn open(t: &Swtpm) -> Context {
    tpm::open_conf(tpm::tcti(&t.tcti_name()).unwrap()).unwrap()
}

/// Defines an NV counter at `index` with the floor counter's attributes
/// (another user of the TPM, or the floor's own counter left by a first use
/// cut short) and increments it `n` times.
fn other_counter(ctx: &mut Context, index: u32, n: usize) {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .unwrap();
    let public = NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index).unwrap())
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
        .unwrap();
    let h = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_define_space(Provision::Owner, None, public)
        })
        .unwrap();
    for _ in 0..n {
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_increment(NvAuth::Owner, h)
        })
        .unwrap();
    }
}

#[test]
fn the_floor_goes_up_and_never_down() {
    let t = Swtpm::start();
    let mut ctx = open(&t);
    assert_eq!(
        floor::read(&mut ctx).unwrap(),
        None,
        "a new TPM has no floor"
    );
    assert_eq!(floor::raise(&mut ctx, 3).unwrap(), 3);
    assert_eq!(floor::read(&mut ctx).unwrap(), Some(3));
    assert_eq!(floor::raise(&mut ctx, 2).unwrap(), 3, "never down");
    assert_eq!(floor::raise(&mut ctx, 5).unwrap(), 5);
    // Another connection (the next boot's stage) reads the same.
    drop(ctx);
    let mut ctx = open(&t);
    assert_eq!(floor::read(&mut ctx).unwrap(), Some(5));
    assert!(floor::allows(5, Some(5)).is_ok());
    let e = floor::allows(4, Some(5)).unwrap_err();
    assert!(e.contains("below this node's floor 5"), "{e}");
    assert!(floor::allows(1, None).is_ok(), "no floor");
    // The operator's deliberate downgrade: the floor removed, and set again
    // by the next slot marked successful, at its own version.
    assert!(floor::reset(&mut ctx).unwrap());
    assert_eq!(floor::read(&mut ctx).unwrap(), None);
    assert!(!floor::reset(&mut ctx).unwrap());
    assert_eq!(floor::raise(&mut ctx, 2).unwrap(), 2);
}

#[test]
fn a_tpm_whose_counters_ran_before_starts_the_floor_at_zero() {
    let t = Swtpm::start();
    let mut ctx = open(&t);
    other_counter(&mut ctx, 0x0150_0001, 7);
    assert_eq!(floor::raise(&mut ctx, 2).unwrap(), 2);
    assert_eq!(floor::read(&mut ctx).unwrap(), Some(2));
}

#[test]
fn a_first_use_cut_short_is_completed() {
    let t = Swtpm::start();
    let mut ctx = open(&t);
    // The counter was defined and never incremented (power cut).
    other_counter(&mut ctx, floor::COUNTER, 0);
    assert_eq!(floor::read(&mut ctx).unwrap(), None);
    assert_eq!(floor::raise(&mut ctx, 1).unwrap(), 1);
    assert_eq!(floor::read(&mut ctx).unwrap(), Some(1));
}

#[test]
fn droverctl_shows_and_resets_the_floor() {
    let t = Swtpm::start();
    let ctl = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_droverctl"))
            .args(["security-floor", "--tpm", &t.tcti_name()])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(ctl(&[]), "no security-version floor yet\n");
    floor::raise(&mut open(&t), 3).unwrap();
    assert_eq!(ctl(&[]), "security-version floor: 3\n");
    let v: serde_json::Value = serde_json::from_str(&ctl(&["--reset", "--json"])).unwrap();
    assert_eq!(v, serde_json::json!({"floor": null, "removed": true}));
    assert_eq!(ctl(&[]), "no security-version floor yet\n");
}
