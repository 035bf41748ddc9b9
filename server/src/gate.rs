//! Who may create rooms, and how often.
//!
//! Creating a room writes to the database, so a public server must not create them for anyone
//! at any rate: each client (its address, from the trusted proxy's `X-Forwarded-For` when one
//! stands between; IPv6 clients by their /64, which one machine commonly holds whole) gets a
//! bucket of `--max-rooms-per-minute` creations, refilled at that rate, and is answered 429
//! with `Retry-After` past it. With `--create-token`, only requests bearing that secret create
//! rooms at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::auth;
use crate::bucket::TokenBucket;

/// Clients remembered at most; past it, the ones whose buckets are full again are forgotten.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No creation secret was sent, though the server needs one.
    Unauthorized,
    /// A wrong creation secret.
    Forbidden,
    /// Too many rooms from this client: try again after this long.
    TooMany(Duration),
}

pub struct Gate {
    /// The SHA-256 of the creation secret, if the server has one.
    secret_hash: Option<String>,
    per_minute: f64,
    // A std mutex: held for a lookup, never across an await.
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl Gate {
    pub fn new(create_token: Option<&str>, per_minute: u32) -> Gate {
        Gate {
            secret_hash: create_token.map(auth::hash_token),
            per_minute: f64::from(per_minute.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Lets one creation through for `client` presenting `secret`, or says why not.
    pub fn admit(&self, client: IpAddr, secret: Option<&str>) -> Result<(), Refused> {
        if let Some(hash) = &self.secret_hash {
            match secret {
                None => return Err(Refused::Unauthorized),
                Some(secret) if !auth::token_matches(secret, hash) => {
                    return Err(Refused::Forbidden)
                }
                Some(_) => {}
            }
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_CLIENTS {
            buckets.retain(|_, b| !b.is_full());
        }
        let per_minute = self.per_minute;
        buckets
            .entry(key(client))
            .or_insert_with(|| TokenBucket::new(per_minute / 60.0, per_minute))
            .take()
            .map_err(Refused::TooMany)
    }
}

/// The key a client's creations are counted under: its IPv4 address, or its IPv6 /64.
fn key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_own_bucket_and_a_retry_time() {
        let gate = Gate::new(None, 3);
        let ann: IpAddr = "192.0.2.1".parse().unwrap();
        let bob: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| gate.admit(ann, None).is_ok()));
        let Err(Refused::TooMany(wait)) = gate.admit(ann, None) else {
            panic!("the fourth room in a minute is refused")
        };
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(gate.admit(bob, None).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        let gate = Gate::new(None, 1);
        assert!(gate.admit("2001:db8::1".parse().unwrap(), None).is_ok());
        assert!(gate.admit("2001:db8::2".parse().unwrap(), None).is_err());
        assert!(gate.admit("2001:db8:0:1::1".parse().unwrap(), None).is_ok());
    }

    #[test]
    fn the_creation_secret_is_needed_when_set() {
        let gate = Gate::new(Some("s3cret"), 100);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(gate.admit(client, None), Err(Refused::Unauthorized));
        assert_eq!(gate.admit(client, Some("guess")), Err(Refused::Forbidden));
        assert_eq!(gate.admit(client, Some("s3cret")), Ok(()));
    }
}
