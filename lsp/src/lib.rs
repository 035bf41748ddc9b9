//! duet-lsp: the bridge between one editor (over LSP) and one duet room (over y-websocket).
//!
//! [`transport`] checks each message from the editor; [`backend`] receives them as LSP and
//! forwards them, in order, to the [`session`] task,
//! which owns all state: the documents' [`shadow`]s (operational transform against the
//! editor), the room [`replica`] (the CRDT), and the [`connection`].

pub mod backend;
pub mod config;
pub mod connection;
pub mod encoding;
pub mod logging;
pub mod ot;
pub mod replica;
pub mod session;
pub mod shadow;
pub mod status;
pub mod tls;
pub mod transport;
pub mod workspace;
