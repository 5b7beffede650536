//! logwarden reads web server and application logs during an incident, finds the clients
//! and accounts behind an attack, and writes proposals for a human to review.
//!
//! The modules follow the pipeline: [`source`] (bytes in; [`loki`] for Grafana Loki) → [`framing`] (whole lines) →
//! [`wrapper`] (Kubernetes and container wrappers off) → [`parse`] (line to record) →
//! [`detect`] (what a record means) → [`aggregate`] (evidence per client and account) →
//! [`decide`] (thresholds over time windows) → [`report`] (what the reader sees) and
//! [`remedy`] (the review bundle: blocklist patch, account-lock SQL, their rollbacks).

pub mod aggregate;
pub mod client;
pub mod decide;
pub mod detect;
pub mod error;
pub mod follow;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod loki;
pub mod parse;
pub mod pipeline;
pub mod remedy;
pub mod report;
pub mod source;
pub mod time;
pub mod wrapper;

pub use error::{Error, Result};
