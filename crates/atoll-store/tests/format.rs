//! Every persisted record starts with a format version, and a reader refuses a newer version
//! instead of misreading it: the data directory's layout version, and each record's encoding.

use atoll_config::KeyspaceConfig;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::Policy;
use atoll_core::{AtollError, RegionId, codec};
use atoll_store::backend::{Backend, MemBackend, Mutation, Table};
use atoll_store::keys;
use atoll_store::store::STORE_FORMAT_VERSION;
use atoll_store::{Store, StoreOptions};
use std::sync::Arc;

fn open(backend: Arc<MemBackend>, me: &str) -> atoll_core::Result<Store> {
    let opts = StoreOptions::new(
        RegionId::new(me).expect("region"),
        vec![KeyspaceConfig::new("sessions", Policy::Lww)],
    );
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
    let backend: Arc<dyn Backend> = backend;
    Store::open(backend, opts, clock)
}

#[test]
fn a_new_data_directory_records_its_layout_version_and_owner() {
    let backend = Arc::new(MemBackend::default());
    drop(open(backend.clone(), "us-east-1").expect("open"));
    let raw = backend
        .get(Table::Meta, keys::META_FORMAT)
        .expect("get")
        .expect("format version written at init");
    assert_eq!(
        codec::decode::<u16>(&raw).expect("decode"),
        STORE_FORMAT_VERSION
    );
    // Every record carries the codec's version in its first two bytes.
    assert_eq!(
        codec::version_of(&raw).expect("version"),
        codec::FORMAT_VERSION
    );
}

#[test]
fn a_newer_layout_version_is_refused() {
    let backend = Arc::new(MemBackend::default());
    backend
        .commit(
            vec![Mutation::Put(
                Table::Meta,
                keys::META_FORMAT.to_vec(),
                codec::encode(&(STORE_FORMAT_VERSION + 1)).expect("encode"),
            )],
            true,
        )
        .expect("commit");
    match open(backend, "us-east-1") {
        Err(AtollError::FormatTooNew { found, supported }) => {
            assert_eq!(found, STORE_FORMAT_VERSION + 1);
            assert_eq!(supported, STORE_FORMAT_VERSION);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a data directory of a newer layout was opened"),
    }
}

#[test]
fn a_record_of_a_newer_encoding_is_an_error_not_a_misread() {
    let backend = Arc::new(MemBackend::default());
    let store = open(backend.clone(), "us-east-1").expect("open");
    // A key state written by a future version: its first two bytes say so.
    let mut raw = (codec::FORMAT_VERSION + 1).to_le_bytes().to_vec();
    raw.extend_from_slice(&[0, 1, 2, 3]);
    backend
        .commit(
            vec![Mutation::Put(
                Table::Data,
                keys::data_key("sessions", b"k"),
                raw,
            )],
            true,
        )
        .expect("commit");
    let err = store
        .get("sessions", b"k")
        .expect_err("a newer record was decoded");
    assert!(
        err.to_string()
            .contains(&format!("{}", codec::FORMAT_VERSION + 1)),
        "the error does not name the version: {err}"
    );
}

#[test]
fn a_data_directory_of_another_region_is_refused() {
    let backend = Arc::new(MemBackend::default());
    drop(open(backend.clone(), "us-east-1").expect("open"));
    let err = open(backend, "eu-west-1")
        .err()
        .expect("opened another region's data");
    assert!(err.to_string().contains("us-east-1"), "{err}");
}
