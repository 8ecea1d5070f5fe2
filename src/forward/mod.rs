//! Signed webhooks out (issue 18): every status change delivered to the partner's system, at
//! least once and in order per item. Built in steps; so far the signature every delivery
//! carries ([`signature`]).

pub mod signature;
