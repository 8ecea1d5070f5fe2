//! Signed webhooks out (issue 18): every status change delivered to the partner's system, at
//! least once and in order per item. Built in steps; so far what one delivery is: its body
//! ([`message`]), its signature ([`signature`]), one attempt over HTTP ([`attempt`]) and when a
//! failed one is tried again or parked ([`retry`]). The outbox that feeds them from the change
//! feed and keeps each item's order comes next.

pub mod attempt;
pub mod message;
pub mod retry;
pub mod signature;
