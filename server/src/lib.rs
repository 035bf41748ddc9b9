//! duet's room server, and the small library it shares with the bridge.
//!
//! Without the `server` feature this crate is only [`paths`], [`protocol`],
//! [`bucket`], [`clock`], [`digest`], [`span`] and [`autocomplete`]: the rules
//! that both binaries must apply identically live here, once.

pub mod autocomplete;
pub mod bucket;
pub mod clock;
pub mod digest;
pub mod paths;
pub mod protocol;
pub mod span;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod blocking;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod connections;
#[cfg(feature = "server")]
pub mod gate;
#[cfg(feature = "server")]
pub mod history;
#[cfg(feature = "server")]
pub mod inspect;
#[cfg(feature = "server")]
pub mod listen;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod proxy;
#[cfg(feature = "server")]
pub mod relay;
#[cfg(feature = "server")]
pub mod room;
#[cfg(feature = "server")]
pub mod rooms;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod ws;
