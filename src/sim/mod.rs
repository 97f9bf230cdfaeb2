//! The scaling simulator (feature `simulate`): runs the pool's own scaling policy and the
//! monitor's decision step in virtual time against a workload described in a [`Profile`], so
//! a day of load runs in a second, and compares [`Policy`]s side by side.
//!
//! The threadtide policies call the same code the monitor calls each tick: the measurements
//! (job duration, arrival rate), the stabiliser and `scaling::decide` (plan) and the same way of
//! applying a plan (spawn within the caps, retire idle workers at once and busy ones between
//! jobs, rebalance when a worker exits). The host's original manager is modelled as it was
//! written (see [`Policy::Host`]). `docs/SCALING.md` has the figures of the shipped profiles
//! and what the simulator leaves out.
//!
//! # Profile format
#![doc = include_str!("profile_format.md")]
//!
//! # Examples
//!
//! ```
//! use threadtide::sim::{Policy, Profile, simulate};
//!
//! let profile = Profile::parse(
//!     "horizon 1h\n\
//!      queue conferencia\n\
//!        burst 1s 322\n\
//!        duration 20s 0.3\n\
//!        init 8s\n\
//!        target_wait 10m\n",
//! )?;
//! for policy in Policy::ALL {
//!     let run = simulate(&profile, policy);
//!     let all = run.all();
//!     println!("{}: p95 wait {:?}, {} worker-seconds", run.policy, all.p95_wait, all.worker_seconds);
//! }
//! # Ok::<(), threadtide::sim::ProfileError>(())
//! ```

mod engine;
mod jobs;
mod profile;
mod report;

pub use engine::{Policy, simulate, simulate_jobs};
pub use jobs::JobSpec;
pub use profile::{Arrival, Profile, ProfileError, QueueProfile, Slowdown};
pub use report::{Run, Sample, Summary};
