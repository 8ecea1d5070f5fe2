//! Signed webhooks out (issue 18): every status change delivered to the partner's system, at
//! least once and in order per item. Built in steps; so far what one delivery is: its body
//! ([`message`]), its signature ([`signature`]) and one attempt over HTTP ([`attempt`]). The
//! outbox that feeds them from the change feed, retries them and keeps each item's order comes
//! next.

pub mod attempt;
pub mod message;
pub mod signature;
