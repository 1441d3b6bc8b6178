//! The behaviour suite: every test runs against the embedded and the scale-out backend.

mod harness;

mod accounts;
mod attachments;
mod authz;
mod calls;
mod contacts;
mod contract;
mod garbage;
mod groups;
mod hardening;
mod keys;
mod linking;
mod messages;
mod operations;
mod outages;
mod processes;
mod socket;
