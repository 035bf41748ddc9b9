//! Work that may take long (encoding or checking a whole room's document, loading a room) runs
//! through [`blocking`], so that it never holds up the async workers that every other room and
//! every HTTP request share: one large room must not stall the rest of the server.

/// Runs `f` where it may block: on a multi-threaded runtime the current worker hands its other
/// tasks to a fresh worker first (`block_in_place`); elsewhere (unit tests, a current-thread
/// runtime) `f` simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
