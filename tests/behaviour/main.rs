//! The behaviour suite: every test runs against the embedded and the scale-out backend.

mod harness;

mod accounts;
mod attachments;
mod authz;
mod browser;
mod calls;
mod contacts;
mod contract;
mod demo;
mod deploy;
mod garbage;
mod groups;
mod hardening;
mod jobs;
mod keys;
mod linking;
mod live;
mod messages;
mod moving;
mod operations;
mod outages;
mod pki;
mod prekey_reserve;
mod processes;
mod push;
mod push_contract;
mod socket;
mod store_tls;
mod tls;
mod upkeep;
