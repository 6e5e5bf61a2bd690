//! The fuzz targets' bodies, as a library so that the seed generator (`tests/seeds.rs`) and
//! the targets share one definition of each input format.
//!
//! Every target checks more than "no panic"; see each module.

#![forbid(unsafe_code)]

pub mod connection;
pub mod decode;
pub mod emulator;
pub mod payload;
pub mod script;
pub mod seeds;
