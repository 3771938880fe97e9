//! The runner's flags of `monivault run`.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use monivault::runner::{NetworkPolicy, RunnerSettings};

#[derive(clap::Args, Debug, Clone)]
pub struct RunnerArgs {
    /// Checks (scheduled and Test Now) running at once, at most.
    #[arg(long, env = "MONIVAULT_RUNNER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub runner_concurrency: u32,
    /// Let checks reach loopback, link-local (cloud metadata) and the --runner-blocked-cidr
    /// ranges. Off by default: a monitor must not become a way into the cluster. Local mode
    /// and the tests turn it on.
    #[arg(long, env = "MONIVAULT_RUNNER_ALLOW_INTERNAL")]
    pub runner_allow_internal: bool,
    /// Address ranges checks may not reach, e.g. the cluster's service and pod CIDRs
    /// (repeat, or comma-separate).
    #[arg(
        long = "runner-blocked-cidr",
        env = "MONIVAULT_RUNNER_BLOCKED_CIDRS",
        value_delimiter = ','
    )]
    pub runner_blocked_cidrs: Vec<IpNet>,
    /// Resolve a host name to fixed addresses before DNS, like curl's --resolve:
    /// `shop.test=127.0.0.1` (repeat). The addresses are still checked. For tests and demos.
    #[arg(long = "runner-resolve", env = "MONIVAULT_RUNNER_RESOLVE", value_delimiter = ',', value_parser = parse_resolve)]
    pub runner_resolve: Vec<(String, IpAddr)>,
    /// Finished MonitorRuns kept per monitor; older ones are deleted.
    #[arg(long, env = "MONIVAULT_RUNS_KEPT_PER_MONITOR", default_value_t = 10)]
    pub runs_kept_per_monitor: usize,
}

impl RunnerArgs {
    pub fn settings(
        &self,
        watch_namespace: Option<String>,
        instance: String,
        store_namespace: String,
    ) -> RunnerSettings {
        let mut resolve: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (host, address) in &self.runner_resolve {
            resolve.entry(host.clone()).or_default().push(*address);
        }
        RunnerSettings {
            watch_namespace,
            instance,
            concurrency: self.runner_concurrency as usize,
            network: NetworkPolicy {
                allow_internal: self.runner_allow_internal,
                blocked: self.runner_blocked_cidrs.clone(),
                resolve,
            },
            runs_kept_per_monitor: self.runs_kept_per_monitor,
            store_namespace: Some(store_namespace),
        }
    }
}

fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (host, address) = text
        .split_once('=')
        .ok_or_else(|| format!("expected <host>=<address>, got {text:?}"))?;
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(format!("no host in {text:?}"));
    }
    let address = address
        .trim()
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    Ok((host, address))
}
