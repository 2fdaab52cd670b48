//! Peer connections: [`fetch`] is the side that asks one peer for pieces,
//! [`serve`] the side that answers other peers, [`conn_pools`] who may hold
//! a place on its port; [`upload_scheduler`]
//! chooses which request is served next, [`send_buffer`] keeps the
//! uplink's queue short, and [`token_bucket`] limits the rate of either
//! direction.

pub mod choke;
pub mod conn_pools;
pub mod fetch;
pub mod reach;
pub mod send_buffer;
pub mod serve;
pub mod token_bucket;
pub mod uplink;
pub mod upload_scheduler;
