//! monivault: a secrets vault for synthetic monitoring on Kubernetes.
//!
//! Each part has its own room and meets the others through small typed interfaces:
//! - [`api`]: the CRD types (`VaultSection`, `VaultItem`, `Monitor`, `MonitorRun`);
//! - [`crypto`]: the vault engine: key hierarchy, AEAD, sealing, rotation steps. Pure, no I/O;
//! - [`runner`]: monitor checks, templating and scrubbing;
//! - [`store`]: the internal store: root keys, keyring and item records in Secrets, by
//!   compare-and-swap;
//! - [`telemetry`]: logging, metrics and the operations HTTP server (`/metrics`, `/healthz`,
//!   `/readyz`).
//! - [`webhook`]: the admission decisions: sealing VaultItem plaintext, and who may write a
//!   Monitor or MonitorRun that carries vault items.

pub mod api;
pub mod controller;
pub mod crypto;
pub mod runner;
pub mod store;
pub mod telemetry;
pub mod webhook;
