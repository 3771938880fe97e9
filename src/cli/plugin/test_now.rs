//! `kubectl monivault test-now MONITOR`: "Test Now" of a saved monitor. Creates a
//! MonitorRun with `monitorRef`, which the webhook admits only for a user with `use` on
//! every item the monitor carries, and which the runner on the leader runs once; waits for
//! it, prints its (scrubbed) result, and exits by it.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use monivault::api::duration::parse_period;
use monivault::api::{Monitor, MonitorRun, MonitorRunSpec, MonitorRunStatus, RunPhase};
use serde::Serialize;

use super::output::{self, Format};
use super::{KubeArgs, PluginError, api_code, api_message, exit};

/// How often a waiting run is read again. Polled with `get`, not watched: a user may
/// run monitors with create and get alone.
const POLL_EVERY: Duration = Duration::from_millis(500);

#[derive(clap::Args, Debug, Clone)]
pub struct TestNowArgs {
    /// The Monitor to run.
    pub monitor: String,
    /// The monitor's namespace (default: the context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Wait for the run to finish and exit by its result (the default); --wait=false
    /// returns once the run is created.
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub wait: bool,
    /// How long to wait for the result, e.g. 60s or 2m.
    #[arg(long, default_value = "60s", value_parser = parse_period)]
    pub timeout: Duration,
    /// Print the run as json or yaml instead of a table.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// What `test-now` prints: the run and its status, as the runner wrote it (scrubbed).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub namespace: String,
    pub run: String,
    pub monitor: String,
    pub status: MonitorRunStatus,
}

impl RunReport {
    fn phase(&self) -> Option<RunPhase> {
        self.status.phase
    }

    pub fn table(&self) -> String {
        let result = self.status.result.clone().unwrap_or_default();
        let phase = self
            .phase()
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".to_owned());
        let mut text = output::table(
            &[
                "run",
                "monitor",
                "phase",
                "status code",
                "response time",
                "reason",
                "message",
            ],
            &[vec![
                self.run.clone(),
                self.monitor.clone(),
                phase,
                result
                    .status_code
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                result
                    .response_time
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                result.reason.clone().unwrap_or_default(),
                result.message.clone().unwrap_or_default(),
            ]],
        );
        if !result.assertions.is_empty() {
            let rows: Vec<Vec<String>> = result
                .assertions
                .iter()
                .map(|a| {
                    vec![
                        a.assertion.clone(),
                        if a.passed { "yes" } else { "no" }.to_owned(),
                        a.message.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&output::table(&["assertion", "passed", "message"], &rows));
        }
        text
    }

    /// The exit code this run's outcome means.
    pub fn exit_code(&self) -> u8 {
        match self.phase() {
            Some(RunPhase::Succeeded) => exit::YES,
            Some(RunPhase::Failed) => exit::NO,
            // Not waited for: created is all that was asked.
            _ => exit::YES,
        }
    }
}

/// `generateName` for a run of `monitor`: its name and `-now-`, short enough that the five
/// characters the API server adds keep it a valid name (253 at most).
pub fn run_prefix(monitor: &str) -> String {
    let mut prefix: String = monitor.chars().take(240).collect();
    prefix.push_str("-now-");
    prefix
}

/// Creates the run, and with `--wait` waits for its result.
pub async fn run(args: TestNowArgs) -> Result<u8, PluginError> {
    let connection = args.kube.connect().await?;
    let namespace = connection.namespace(args.namespace.as_deref());
    let client = connection.client;

    // A clear "no such monitor" before the webhook's, and without a run left behind.
    let monitors: Api<Monitor> = Api::namespaced(client.clone(), &namespace);
    let found = monitors
        .get_opt(&args.monitor)
        .await
        .map_err(|source| api_error(source, "get monitors", &namespace))?;
    if found.is_none() {
        return Err(PluginError::MonitorNotFound {
            namespace,
            monitor: args.monitor.clone(),
        });
    }

    let runs: Api<MonitorRun> = Api::namespaced(client, &namespace);
    let run = MonitorRun {
        metadata: ObjectMeta {
            generate_name: Some(run_prefix(&args.monitor)),
            ..ObjectMeta::default()
        },
        spec: MonitorRunSpec::of_monitor(args.monitor.as_str()),
        status: None,
    };
    let created = match runs.create(&PostParams::default(), &run).await {
        Ok(created) => created,
        // The webhook's refusal: print its message, which names the items not allowed.
        // (A 403 from RBAC itself, no create on monitorruns, is a lack of access: exit 2.)
        Err(e) if api_code(&e) == Some(403) && is_admission_refusal(&e) => {
            eprintln!(
                "error: test-now of monitor {namespace}/{} refused: {}",
                args.monitor,
                api_message(&e).unwrap_or("forbidden")
            );
            return Ok(exit::NO);
        }
        Err(source) => return Err(api_error(source, "create monitorruns", &namespace)),
    };
    let name = created.name_any();
    let mut report = RunReport {
        namespace: namespace.clone(),
        run: name.clone(),
        monitor: args.monitor.clone(),
        status: created.status.unwrap_or_default(),
    };
    if args.wait {
        report.status = wait_for(&runs, &namespace, &name, args.timeout).await?;
    } else if args.output.is_none() {
        output::print(&format!("monitorrun.monivault.io/{name} created\n"))?;
        return Ok(exit::YES);
    }
    output::print(&output::render(args.output, &report, || report.table())?)?;
    Ok(report.exit_code())
}

/// Reads the run until it has finished, for at most `timeout`.
async fn wait_for(
    runs: &Api<MonitorRun>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<MonitorRunStatus, PluginError> {
    let deadline = Instant::now() + timeout;
    loop {
        let run = runs
            .get(name)
            .await
            .map_err(|source| api_error(source, "get monitorruns", namespace))?;
        let status = run.status.unwrap_or_default();
        if status.phase.is_some_and(RunPhase::is_finished) {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(PluginError::Timeout {
                namespace: namespace.to_owned(),
                run: name.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether a refusal came from an admission webhook (monivault's `use` check) rather
/// than from RBAC; the API server prefixes a webhook's message so.
fn is_admission_refusal(error: &kube::Error) -> bool {
    api_message(error).is_some_and(|m| m.starts_with("admission webhook"))
}

fn api_error(source: kube::Error, action: &str, namespace: &str) -> PluginError {
    if api_code(&source) == Some(403) {
        return PluginError::Forbidden {
            action: format!("{action} in namespace {namespace}"),
            message: api_message(&source).unwrap_or("forbidden").to_owned(),
            hint: "test-now needs get on monitors and monitorruns and create on monitorruns (the monivault-edit ClusterRole), and use on the monitor's items".to_owned(),
        };
    }
    PluginError::Api {
        what: action.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use monivault::api::{AssertionResult, RunResult};

    use super::*;

    fn report(phase: Option<RunPhase>) -> RunReport {
        RunReport {
            namespace: "shop".into(),
            run: "home-now-x7k2p".into(),
            monitor: "home".into(),
            status: MonitorRunStatus {
                phase,
                result: Some(RunResult {
                    passed: false,
                    reason: Some("AssertionFailed".into()),
                    status_code: Some(500),
                    response_time: Some(monivault::api::Duration::from_std(Duration::from_millis(
                        12,
                    ))),
                    assertions: vec![AssertionResult {
                        assertion: "statusCodes".into(),
                        passed: false,
                        message: Some("got 500, want one of [200]".into()),
                    }],
                    message: Some("status 500".into()),
                    body_excerpt: None,
                }),
                ..MonitorRunStatus::default()
            },
        }
    }

    #[test]
    fn the_exit_code_is_the_runs_outcome() {
        assert_eq!(report(Some(RunPhase::Succeeded)).exit_code(), exit::YES);
        assert_eq!(report(Some(RunPhase::Failed)).exit_code(), exit::NO);
        assert_eq!(
            report(None).exit_code(),
            exit::YES,
            "created, not waited for"
        );
    }

    #[test]
    fn the_result_prints_as_a_table_with_its_assertions() {
        let table = report(Some(RunPhase::Failed)).table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("RUN "), "{table}");
        assert!(lines[1].contains("Failed"), "{table}");
        assert!(lines[1].contains("500"), "{table}");
        assert!(lines[1].contains("AssertionFailed"), "{table}");
        assert!(lines[1].ends_with("status 500"), "{table}");
        assert!(table.contains("statusCodes   no       got 500"), "{table}");
        let json: serde_json::Value =
            serde_json::to_value(report(Some(RunPhase::Failed))).expect("json");
        assert_eq!(json["status"]["phase"], "Failed");
        assert_eq!(json["status"]["result"]["statusCode"], 500);
    }

    #[test]
    fn a_long_monitor_name_still_makes_a_valid_run_name() {
        assert_eq!(run_prefix("shop"), "shop-now-");
        let long = "m".repeat(253);
        assert!(run_prefix(&long).len() + 5 <= 253);
    }
}
