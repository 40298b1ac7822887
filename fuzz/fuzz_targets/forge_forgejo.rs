//! `hoist::forge::receive` for Forgejo's route (see `forge_common.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "forge_common.rs"]
mod forge_common;

fuzz_target!(|data: &[u8]| forge_common::run(hoist::forge::Forge::Forgejo, data));
