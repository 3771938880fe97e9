//! The runner: executes monitors with their secrets, and scrubs every trace of them.
//!
//! What it must never do: write a plaintext anywhere (status, Event, log line, error) or
//! send a secret to a host outside the item's `allowedHosts`.
