//! Policies the syncer enforces before anything reaches the host (pure).
//!
//! - [`pss`]: Pod Security Standards levels.

pub mod pss;
