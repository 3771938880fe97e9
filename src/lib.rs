//! monivault: a secrets vault for synthetic monitoring on Kubernetes.
//!
//! Each part has its own room and meets the others through small typed interfaces:
//! - [`api`]: the CRD types (`VaultSection`, `VaultItem`, `Monitor`, `MonitorRun`) and the
//!   placeholder language of the Monitor spec ([`api::template`]);
//! - [`crypto`]: the vault engine: key hierarchy, AEAD, sealing, rotation steps. Pure, no I/O;
//! - [`store`]: the internal store: root keys, keyring and item records in Secrets, by
//!   compare-and-swap, and the environment key access every other part shares
//!   ([`store::Keys`]);
//! - [`stamp`]: the admission stamp: made by the webhook, checked by the runner;
//! - [`controller`]: the reconcile loops, key rotation and the leader Lease;
//! - [`webhook`]: the admission decisions: sealing VaultItem plaintext, and who may write a
//!   Monitor or MonitorRun that carries vault items;
//! - [`runner`]: monitor checks, with secrets pinned to their hosts, and scrubbing;
//! - [`telemetry`]: logging, metrics and the operations HTTP server (`/metrics`, `/healthz`,
//!   `/readyz`).
//!
//! Import rules (checked by `tests/rooms.rs`); only `main.rs` wires parts together:
//!
//! | room | may import |
//! |---|---|
//! | `api`, `crypto` | no other part |
//! | `telemetry` | no other part |
//! | `store` | `api`, `crypto` |
//! | `stamp` | `api`, `crypto`, `store` |
//! | `controller` | `api`, `crypto`, `store`, `stamp`, `telemetry` |
//! | `webhook` | `api`, `crypto`, `store`, `stamp`, `telemetry` |
//! | `runner` | `api`, `crypto`, `store`, `stamp`, `telemetry` |

pub mod api;
pub mod controller;
pub mod crypto;
pub mod runner;
pub mod stamp;
pub mod store;
pub mod telemetry;
pub mod webhook;
